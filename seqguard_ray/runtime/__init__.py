"""Runtimes: thin adapters that run the core's stages in-process, on Ray Data / Ray Train, and behind gRPC / Ray Serve."""
