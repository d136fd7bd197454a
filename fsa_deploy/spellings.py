"""Old spellings of renamed options: each parses exactly as its new name, after one deprecation line.

An option that meant two things in two verbs (`--cache-dir`: the model hub's cache or the class-embedding
cache; `--max-batch`: a graph's limit or crops per call) was renamed where it meant the other thing. The old
spelling is registered as a second name of the new option's own argparse action, so its type, range,
choices, mutually exclusive groups and abbreviations are the new one's by construction; the action only
adds the deprecation line and refuses the two spellings together (exit 2). docs/CONTRACT.md's migration table lists
RENAMED row for row (tests/test_options.py compares them).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

# (verb or make target, old spelling) -> new spelling
RENAMED: dict[tuple[str, str], str] = {
    ("export", "--cache-dir"): "--hub-cache",
    ("dump", "--cache-dir"): "--hub-cache",
    ("bench", "--cache-dir"): "--hub-cache",
    ("calibrate", "--count"): "--calibration-count",
    ("calibrate", "--no-cache"): "--no-calibration-cache",
    ("segment", "--max-batch"): "--batch",
    ("validate", "--max-batch"): "--batch",
    ("validate", "--artifact"): "--graph",
    ("eval", "--max-batch"): "--batch",
    ("bench", "--max-batch"): "--batch",
    ("triton", "--max-batch"): "--batch",
    ("serve", "--max-batch"): "--batch",
    ("bench-build", "--calibrate-count"): "--calibration-count",
    ("export-b16", "--classes"): "--num-classes",
    ("bench-eval", "--images"): "--num-images",
}

GIVEN = "_fsa_spellings_given"  # namespace attribute of one parse; OneLineParser removes it


def _spelling(action: argparse.Action, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
              option_string: str | None) -> str:
    """The new spelling (what the action then sees); exit 2 when both spellings are given."""
    new = action.option_strings[0]
    old: dict[str, str] = getattr(action, "old_spellings", {})
    used = option_string if option_string in old else new
    note = f"{old[used]} is deprecated, use {new}{old[used][len(used):]}" if used != new else None
    given: dict[int, tuple[str, str | None]] = namespace.__dict__.setdefault(GIVEN, {})
    first, _ = given.setdefault(id(action), (used, note))
    if first != used:
        bad = used if used != new else first
        parser.error(f"{bad} and {new}: give {new} only ({bad} is its deprecated spelling)")
    return new


def take_notes(namespace: argparse.Namespace) -> list[str]:
    """The deprecation lines of one parse (printed once it succeeded), its state removed from `namespace`."""
    given: dict[int, tuple[str, str | None]] = namespace.__dict__.pop(GIVEN, {})
    return [note for _, note in given.values() if note]


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2; every fsa parser (and the make
    targets' scripts) is one, so the deprecation lines are printed here, beside the spellings."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")

    # argparse's three typed overloads, taken and returned as they are
    def parse_known_args(  # type: ignore[override]
            self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, then one line per deprecated spelling used (take_notes)."""
        parsed, extras = super().parse_known_args(args, namespace)
        for note in take_notes(parsed):
            print(f"{self.prog}: {note}", file=sys.stderr)  # argparse's own channel, as its usage errors
        return parsed, extras


_CLASSES: dict[type, type] = {}


def _with_spellings(cls: type[argparse.Action]) -> type[argparse.Action]:
    """`cls` whose call first checks the spelling (one subclass per argparse action class)."""
    if cls not in _CLASSES:
        def __call__(self: Any, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
            cls.__call__(self, parser, namespace, values, _spelling(self, parser, namespace, option_string))

        _CLASSES[cls] = type(f"Renamed{cls.__name__}", (cls,), {"__call__": __call__})
    return _CLASSES[cls]


def add_old_spellings(parser: argparse.ArgumentParser, verb: str) -> None:
    """Register RENAMED's old spellings of `verb` as second names of their new options (after those exist)."""
    assert isinstance(parser, OneLineParser), "the spellings' parse state is removed by OneLineParser"
    for (where, old), new in RENAMED.items():
        if where != verb:
            continue
        action = parser._option_string_actions[new]
        assert old not in parser._option_string_actions, f"{verb} {old}: still an option of its own"
        parser._option_string_actions[old] = action  # argparse resolves the old name to the same action
        metavar = f" {action.metavar}" if action.nargs != 0 and isinstance(action.metavar, str) else ""
        action.old_spellings = {**getattr(action, "old_spellings", {}), old: old + metavar}  # type: ignore[attr-defined]
        if not isinstance(action, tuple(_CLASSES.values())):
            action.__class__ = _with_spellings(type(action))
        if action.help not in (None, argparse.SUPPRESS):
            action.help = f"{action.help} (old spelling: {old}, deprecated)"
