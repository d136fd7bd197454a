"""One logger for progress, notes and warnings: `fsa_deploy`, one child per room.

A verb's product (JSON, tables, the files it wrote) is printed on stdout; everything a
person watches while it runs goes through `logger(room)` to stderr, so `-q` silences the
progress and `-v` adds detail without each module growing its own flag. The CLI
configures it once per command (`configure`); a library caller that never does gets
Python's default (warnings and errors only), as with any library.

Messages are written as they are given (no level or time prefix): each already names
the verb (`fsa eval: ...`), and the lines are the ones the CLI printed before it had a
logger.
"""

from __future__ import annotations

import argparse
import logging
import sys

ROOT = "fsa_deploy"

# the level shown for -q, for neither, and for -v (given once or more)
QUIET, NORMAL, VERBOSE = logging.WARNING, logging.INFO, logging.DEBUG


def logger(room: str | None = None) -> logging.Logger:
    """The package logger (`fsa_deploy`) or a room's child (`fsa_deploy.export`, ...)."""
    return logging.getLogger(f"{ROOT}.{room}" if room else ROOT)


class StderrHandler(logging.Handler):
    """Each record as one line on the current sys.stderr (looked up per record, so pytest's and
    a caller's redirection apply); through tqdm.write when tqdm is loaded, so an open progress
    bar is redrawn below the line instead of being torn."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            bar = getattr(sys.modules.get("tqdm"), "tqdm", None)
            if bar is not None and getattr(bar, "_instances", None):
                bar.write(line, file=sys.stderr)
            else:
                sys.stderr.write(line + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging's contract: a failed emit never raises into the caller
            self.handleError(record)


def level_of(quiet: bool = False, verbose: int = 0) -> int:
    """-q wins over -v: a script asking for silence gets it whatever else it passes."""
    if quiet:
        return QUIET
    return VERBOSE if verbose else NORMAL


def configure(level: int = NORMAL) -> None:
    """Route the package's records to stderr at `level`; called again, it replaces its handler."""
    root = logger()
    for h in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(h)
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False  # an application's root handler would print each line twice


def add_verbosity_args(p: argparse.ArgumentParser) -> None:
    """-q/--quiet and -v/--verbose, the same on every verb."""
    g = p.add_argument_group("output")
    g.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines on stderr (warnings and errors still show)")
    g.add_argument("-v", "--verbose", action="count", default=0,
                   help="more detail on stderr (progress plus debug lines)")
