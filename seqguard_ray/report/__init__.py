"""The self-contained HTML report of a run: ``write_report``."""

from .page import write_report

__all__ = ["write_report"]
