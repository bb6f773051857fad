"""Text helpers shared by records and reports (no dependencies)."""

from __future__ import annotations


def shorten(text: str, limit: int = 160) -> str:
    """text cut to `limit` characters, "..." marking the cut (a table cell, a log line)."""
    return text if len(text) <= limit else text[:limit - 3] + "..."
