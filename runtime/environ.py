"""Every FSA_* environment variable the tool reads: one table, each parsed and checked once.

`fsa` checks them all before any verb starts (`check_all`), so a bad value is one line naming the
variable, exit 2, before an hour of work (not when a lock is first waited for, after calibrate has
written its cache). Readers call `value(NAME)`, never os.environ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsa_deploy.errors import FSAError, escape


def _seconds(text: str) -> float:
    v = float(text)  # "junk" -> ValueError
    if not math.isfinite(v) or v < 0:
        raise ValueError
    return v


def _pixels(text: str) -> int:
    v = float(text)
    if not math.isfinite(v) or v < 1:
        raise ValueError
    return int(v)


def _folder(text: str) -> Path:
    if not text.strip() or "\x00" in text:
        raise ValueError
    return Path(text).expanduser()


@dataclass(frozen=True)
class Var:
    parse: Callable[[str], Any]
    expected: str
    default: Callable[[], Any]


VARS: dict[str, Var] = {
    "FSA_LOCK_TIMEOUT": Var(_seconds, "a finite number of seconds >= 0, e.g. 300", lambda: 300.0),
    "FSA_MAX_PIXELS": Var(_pixels, "a positive pixel count, e.g. 400000000", lambda: 20_000 * 20_000),
    "FSA_CACHE_DIR": Var(_folder, "a folder", lambda: Path.home() / ".cache" / "fsa-deploy"),
    "FSA_SERVE_VENV": Var(_folder, "a folder (the serving environment)", lambda: None),
}


def is_set(name: str) -> bool:
    return bool(os.environ.get(name))


def value(name: str) -> Any:
    """The parsed value of `name` (its default when unset or empty); FSAError naming it when bad."""
    var = VARS[name]
    text = os.environ.get(name)
    if not text:
        return var.default()
    try:
        return var.parse(text)
    except (ValueError, OverflowError):
        raise FSAError(f"{name}={escape(text)!r}: expected {var.expected}") from None


def check_all() -> None:
    """Parse every FSA_* variable that is set: the first bad one is an FSAError."""
    for name in VARS:
        value(name)
