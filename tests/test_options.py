"""One name, one meaning: every renamed option's old spelling parses exactly as
its new one, with one deprecation line, and the two together are exit 2; every numeric option of every verb
and benchmark script takes its range from fsa_deploy/ranges.py; README's verb table and docs/CONTRACT.md's
migration table are the parser's. All in-process on the parsers (argparse only: ~3 s, most of it importing
the verbs' modules)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re
from functools import cache

import pytest
from conftest import REPO

from fsa_deploy import cli as fsa_cli
from fsa_deploy.ranges import RANGES, Ranged, range_of
from fsa_deploy.spellings import RENAMED

README = (REPO / "README.md").read_text()
CONTRACT = (REPO / "docs" / "CONTRACT.md").read_text()
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# benchmark scripts (their make target) -> where their parser is built
SCRIPTS: dict[str, str] = {
    "bench-build": "benchmarks.engine_build",
    "export-b16": "benchmarks.export_time",
    "bench-eval": "benchmarks.eval_throughput",
    "bench-serve": "benchmarks.serving_overhead",
    "bench-memory": "benchmarks.segment_memory",
    "bench-real-stats": "benchmarks.activation_stats",
    "bench-app": "benchmarks.app_latency",
}
# the least each parser needs before the option under test
REQUIRED: dict[str, list[str]] = {
    "export": ["--out", "o", "--pretrained", "openai"], "dump": ["--image", "i.png", "--out", "o.npz"],
    "calibrate": ["d"], "segment": ["x.png", "--artifact", "a", "--out", "o"], "validate": ["d"],
    "eval": ["voc21", "--root", "r", "--artifact", "a", "--json", "j"], "triton": ["d", "--out", "r"],
    "serve": ["d"], "bench": [], "export-b16": ["--out", "o"], "bench-build": [], "bench-eval": [],
}


def _module(where: str):
    if not where.endswith(".py"):
        return importlib.import_module(where)
    spec = importlib.util.spec_from_file_location(where.replace("/", "_")[:-3], REPO / where)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def parser_of(verb: str) -> argparse.ArgumentParser:
    """The parser of `fsa VERB` (its subparser), or a benchmark script's."""
    if verb in SCRIPTS:
        return _module(SCRIPTS[verb]).build_parser()
    top = fsa_cli.build_parser(verb)
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def parse(verb: str, argv: list[str]) -> dict[str, object]:
    """The namespace `argv` gives (through `fsa` for a verb: the dispatcher's parser, as a user runs it)."""
    if verb in SCRIPTS:
        return vars(parser_of(verb).parse_args(argv))
    return vars(fsa_cli.build_parser(verb).parse_args([verb, *argv]))


def option_args(verb: str, option: str, spelled: str | None = None) -> list[str]:
    """`option` (spelled so) with a value its type takes ("3" serves every one renamed)."""
    action = parser_of(verb)._option_string_actions[option]
    return [spelled or option] if action.nargs == 0 else [spelled or option, "3"]


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line starting with `heading` (header row dropped)."""
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return rows


def migration_table() -> list[tuple[str, str, str]]:
    """(verb or make target, old, new) per place of each row of docs/CONTRACT.md's migration table: what users were
    promised, so dropping an old spelling from the code fails its test here instead of removing it."""
    listed = []
    for old, new, where, _ in table_rows(CONTRACT, "| old spelling |"):
        for place in re.findall(r"`(?:fsa |make )?([\w-]+)`", where):
            listed.append((place, old.strip("`").split()[0], new.strip("`").split()[0]))
    return sorted(set(listed))


MIGRATION = migration_table()


@pytest.mark.parametrize("verb, old, new", MIGRATION, ids=[f"{v} {o}" for v, o, _ in MIGRATION])
def test_old_spelling_parses_as_the_new_one(verb: str, old: str, new: str, capsys: pytest.CaptureFixture[str]) -> None:
    base = REQUIRED[verb]
    as_new = parse(verb, base + option_args(verb, new))
    assert capsys.readouterr().err == ""
    as_old = parse(verb, base + option_args(verb, new, spelled=old))
    assert as_old == as_new
    note = capsys.readouterr().err.splitlines()
    assert len(note) == 1 and f"{old}" in note[0] and f"is deprecated, use {new}" in note[0], note
    with pytest.raises(SystemExit) as e:
        parse(verb, base + option_args(verb, new, spelled=old) + option_args(verb, new))
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"{old} and {new}: give {new} only" in err[0], err


def test_the_spelling_state_stays_out_of_the_namespace() -> None:
    args = parse("segment", REQUIRED["segment"] + ["--max-batch", "4"])
    assert args["batch"] == 4 and not any(k.startswith("_") for k in args), args
    assert parse("calibrate", ["d", "--count", "2"])["calibration_count"] == 2


def _ranged(verb: str) -> list[tuple[str, argparse.Action]]:
    """(parser's verb key, action) of every option of `verb` and of its subcommands (bench.app's)."""
    found, todo = [], [parser_of(verb)]
    while todo:
        p = todo.pop()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += list(action.choices.values())
            else:
                found.append((verb, action))
    return found


@pytest.mark.parametrize("verb", [*fsa_cli.VERBS, *SCRIPTS])
def test_every_numeric_option_takes_its_range_from_the_table(verb: str) -> None:
    if verb not in SCRIPTS and importlib.util.find_spec(fsa_cli.VERBS[verb][0]) is None:
        pytest.fail(f"fsa {verb}: module {fsa_cli.VERBS[verb][0]} missing")
    for key, action in _ranged(verb):
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.type not in (int, float), f"{verb} {name}: type={action.type.__name__} bypasses the ranges"
        if isinstance(action.type, Ranged):
            assert action.type.range is range_of(name, key if key not in SCRIPTS else None), f"{verb} {name}"
            assert str(action.type.range) in (action.help or ""), f"{verb} {name}: --help does not print the range"


def test_every_range_entry_is_an_option_somewhere() -> None:
    used = set()
    for verb in [*fsa_cli.VERBS, *SCRIPTS]:
        for _, action in _ranged(verb):
            if isinstance(action.type, Ranged):
                used |= {action.type.option, f"{verb} {action.type.option}"}
    assert set(RANGES) - used == set(), "ranges of no option"


def test_one_option_has_the_range_its_code_enforces() -> None:
    """fsa triton's --batch is fsa_image's max_batch_size: the repository writer checks the same range."""
    from fsa_deploy.errors import FSAError
    from fsa_deploy.runtime.serve.repository import RepoOptions, _write_models

    assert str(range_of("--batch", "triton")) == "[1, 1024] integer" != str(range_of("--batch", "segment"))
    with pytest.raises(FSAError, match=r"--batch 1025: outside \[1, 1024\]"):
        _write_models(None, REPO, RepoOptions(target="container", batch=1025))  # type: ignore[arg-type]


# ---------------------------------------------------------------- README and docs/CONTRACT.md against the parser

def readme_verb_rows() -> list[tuple[str, str]]:
    rows = table_rows(README, "| verb | what it does |") if "| verb | what it does |" in README else []
    return [(re.match(r"`fsa (\w+)", cells[0]).group(1), cells[0]) for cells in rows]  # type: ignore[union-attr]


def test_readme_verb_table_is_the_parsers_verbs() -> None:
    assert [verb for verb, _ in readme_verb_rows()] == list(fsa_cli.VERBS)


@pytest.mark.parametrize("verb", list(fsa_cli.VERBS))
def test_readme_verb_row_names_only_the_verbs_options_in_their_new_spelling(verb: str) -> None:
    usage = dict(readme_verb_rows())[verb]
    options = set(parser_of(verb)._option_string_actions)
    old = {o for (v, o) in RENAMED if v == verb}
    named = set(OPTION.findall(usage))
    assert named - options == set(), f"README's fsa {verb} row names options it does not have"
    assert named & old == set(), f"README's fsa {verb} row names deprecated spellings"


def test_contract_migration_table_is_the_renames() -> None:
    assert set(MIGRATION) == {(v, o, n) for (v, o), n in RENAMED.items()}


def test_contract_verb_table_is_the_parsers_verbs() -> None:
    rows = table_rows(CONTRACT, "| verb | does | needs |")
    assert [cells[0].strip("`") for cells in rows] == list(fsa_cli.VERBS)


def test_contract_cli_part_uses_no_deprecated_spelling_as_its_name() -> None:
    """docs/CONTRACT.md's verbs' options: each verb's paragraph names its new spellings; an old one only
    as "old spelling `--x`"."""
    part = CONTRACT[CONTRACT.index("### The verbs' own options"):CONTRACT.index("## The artefact folder")]
    for para in re.split(r"\n- ", part)[1:]:
        verb = re.match(r"\*\*`fsa (\w+)", para)
        if not verb:
            continue
        plain = re.sub(r"old spelling\s+`[^`]*`", "", para)
        old = {o for (v, o) in RENAMED if v == verb.group(1)}
        assert set(OPTION.findall(plain)) & old == set(), f"fsa {verb.group(1)}: {para[:80]}"


def test_every_verb_takes_quiet_and_verbose_and_they_set_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    """-q/--quiet and -v/--verbose on every verb (parsed only); the level they give hides progress lines
    (INFO) under -q while a warning still shows, and -v adds DEBUG lines."""
    import logging

    from fsa_deploy import log

    for verb in fsa_cli.VERBS:
        flags = {s for a in parser_of(verb)._actions for s in a.option_strings}
        assert {"-q", "--quiet", "-v", "--verbose"} <= flags, verb
        if verb not in REQUIRED:
            continue
        args = REQUIRED[verb]
        assert parse(verb, [*args, "-q"])["quiet"] is True, verb
        assert parse(verb, [*args, "--verbose", "-v"])["verbose"] == 2, verb
        assert parse(verb, args)["quiet"] is False and parse(verb, args)["verbose"] == 0, verb
    try:
        capsys.readouterr()
        for quiet, verbose, shown in ((True, 0, ["warn"]), (False, 0, ["info", "warn"]),
                                      (False, 1, ["debug", "info", "warn"]), (True, 1, ["warn"])):
            log.configure(log.level_of(quiet, verbose))
            room = log.logger("test")
            room.debug("debug")
            room.info("info")
            room.warning("warn")
            captured = capsys.readouterr()
            assert captured.err.split() == shown and captured.out == "", (quiet, verbose, captured)
    finally:
        log.configure(logging.INFO)
