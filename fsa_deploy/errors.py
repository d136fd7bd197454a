"""The one exception type for user errors across the project."""

from __future__ import annotations

import unicodedata


class FSAError(Exception):
    """Bad input or bad usage: the CLI prints it as one line and exits with code 2.

    The message names the file or option at fault and what is wrong with it.
    """


class CheckFailed(Exception):
    """A check ran and failed (lint, validate): the CLI exits with code 1."""


_CONTROL = ("Cc", "Cf", "Zl", "Zp")


def escape(text: str) -> str:
    """`text` with control characters (newlines, escape sequences) written as \\n, \\x1b: one
    printable line, whatever a file name or a message from a library holds."""
    if not any(unicodedata.category(c) in _CONTROL for c in text):
        return text
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return "".join(named.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
                   if unicodedata.category(c) in _CONTROL else c for c in text)
