"""Shared by every stage: how an exception becomes the one line a user sees."""
from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty)."""
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__
