"""Readers and writers of behaviour logs and of scoring outputs."""
