"""The one exception type for user errors across the project."""

from __future__ import annotations


class FSAError(Exception):
    """Bad input or bad usage: the CLI prints it as one line and exits with code 2.

    The message names the file or option at fault and what is wrong with it.
    """


class CheckFailed(Exception):
    """A check ran and failed (lint, validate): the CLI exits with code 1."""
