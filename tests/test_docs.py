"""What a user reads cites only what the repository holds: README.md, docs/*.md, every verb's --help
and the package's docstrings and comments name no file outside it (the project's working notes under
`shared/`, a machine's absolute paths) and no number of the project's tracker (a reader has no tracker:
the reason goes in the text), and every `docs/*.md` they point to exists."""

from __future__ import annotations

import importlib.util
import re
import shlex
from functools import cache

import pytest
from conftest import REPO

from fsa_deploy import cli as fsa_cli

# `shared/spec/FSA.md`, `shared/STYLE.md`, ... but not "shared-memory" or "a shared volume"
OUTSIDE = re.compile(r"(?<![\w.-])shared/[\w./-]*|/work/[\w./-]*")
DOCS_LINK = re.compile(r"(?<![\w/.-])docs/[\w.-]+\.md")
SOURCE_ROOTS = ("fsa_deploy", "models", "export", "calibration", "runtime", "validation", "benchmarks", "tools",
                "tests")
# "issue 12", "Issue 23", "#23"; not another project's "pytriton#93" or a CSS colour (no .css is read)
TRACKER = re.compile(r"\b[Ii]ssues? \d+|(?<![\w/#&])#\d+\b")


def lines_holding(text: str, literal: re.Pattern[str]) -> str:
    """Only the lines where a plain `literal` pattern occurs: the full patterns' look-arounds at every position
    of 1.7 MB of sources cost ~10x more than finding these few lines first."""
    found = []
    for m in literal.finditer(text):
        found.append(text[text.rfind("\n", 0, m.start()) + 1:text.find("\n", m.end()) % (len(text) + 1)])
    return "\n".join(found)


OUTSIDE_HINT = re.compile(r"shared/|/work/")
TRACKER_HINT = re.compile(r"ssues? \d|#\d")


def outside_citations(text: str) -> list[str]:
    return sorted({m.rstrip(".") for m in OUTSIDE.findall(lines_holding(text, OUTSIDE_HINT))})


def missing_docs(text: str) -> list[str]:
    return sorted({m for m in DOCS_LINK.findall(text) if not (REPO / m).is_file()})


def verb_help(verb: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as e:
        fsa_cli.main([verb, "--help"])
    assert e.value.code == 0, verb
    return capsys.readouterr().out


def tracker_numbers(text: str) -> list[str]:
    return sorted(set(TRACKER.findall(lines_holding(text, TRACKER_HINT))))


def test_the_pattern_catches_a_citation_and_spares_plain_words():
    assert outside_citations("steps 7-15 of shared/spec/FSA.md (see /work/main/x.py)") == [
        "/work/main/x.py", "shared/spec/FSA.md"]
    assert outside_citations("its shared-memory prefix, a shared volume, docs/METHOD.md") == []
    assert missing_docs("see docs/METHOD.md and docs/NOPE.md") == ["docs/NOPE.md"]
    assert tracker_numbers("as issue 12 found (Issue 23, issues 20, #24)") == [
        "#24", "Issue 23", "issue 12", "issues 20"]
    assert tracker_numbers("numpy 2.x (triton-inference-server/pytriton#93), an issue of 3 lines") == []


@pytest.mark.parametrize("name", ["README.md", *sorted(p.name for p in (REPO / "docs").glob("*.md"))])
def test_readme_and_docs_cite_only_the_repository(name):
    page = REPO / name if name == "README.md" else REPO / "docs" / name
    text = page.read_text()
    assert outside_citations(text) == [], name
    assert missing_docs(text) == [], name
    # a Markdown link or image to a file of the repository, relative to the page
    links = [t for t in re.findall(r"\]\(([^)#:\s]+)(?:#[^)]*)?\)", text) if not (page.parent / t).exists()]
    assert links == [], f"{name} links to files that do not exist"


def test_method_and_contract_docs_exist_and_readme_points_there():
    readme = (REPO / "README.md").read_text()
    for doc in ("docs/METHOD.md", "docs/CONTRACT.md"):
        assert (REPO / doc).is_file(), doc
        assert doc in readme, f"README does not point to {doc}"


def test_readme_is_short_and_points_to_every_page():
    """README is the page a newcomer reads in ten minutes; every topic page of docs/ is reachable from it."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200, "README over 200 lines: move the detail to its docs/ page"
    pages = sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))
    assert [p for p in pages if p not in readme] == [], "docs/ pages the README does not point to"


# a file or folder of this repository named in a page ("runtime/gate.py", "validation/eval/data/"), and `make X`
REPO_PATH = re.compile(r"(?<![\w/.-])(?:" + "|".join(SOURCE_ROOTS) + r")/[\w./-]*[\w/]")
MAKE_TARGET = re.compile(r"`make ([a-z][\w-]*)")


def test_docs_name_only_paths_and_make_targets_that_exist():
    """A page that names a module, a test or a make target the code no longer has is out of date."""
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.M))
    bad = {}
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = page.read_text()
        found = [p for p in REPO_PATH.findall(text) if not (REPO / p).exists()]
        found += [f"make {t}" for t in MAKE_TARGET.findall(text) if t not in targets]
        if found:
            bad[page.name] = sorted(set(found))
    assert bad == {}, f"pages naming what the repository does not have: {bad}"


def doc_commands() -> list[tuple[str, str]]:
    """(page, command line) of every `fsa ...` line of the pages' sh blocks (continuations joined, comments cut;
    usage lines with [optional] parts or "..." are not commands)."""
    found = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip()
                if line.startswith("fsa ") and "[" not in line and "..." not in line:
                    found.append((page.name, line))
    return found


def test_every_example_command_parses(capsys):
    """The examples are meant to be copied: each parses with today's `fsa` (no deprecated spelling either)."""
    commands = doc_commands()
    assert len(commands) >= 20, commands  # the README's examples and the pages' own
    bad = []
    for page, line in commands:
        argv = shlex.split(line)[1:]
        try:
            fsa_cli.build_parser(argv[0]).parse_args(argv)
        except SystemExit:
            bad.append((page, line))
        err = capsys.readouterr().err
        if "deprecated" in err:
            bad.append((page, line + " (deprecated spelling)"))
    assert bad == [], f"examples that do not parse: {bad}"


def test_readme_says_what_make_setup_and_ci_run():
    """The extras README lists for `make setup` are the Makefile's; CI's command is README's test command."""
    readme = (REPO / "README.md").read_text()
    extras = re.search(r'-e "\.\[([\w,]+)\]"', (REPO / "Makefile").read_text())
    assert extras, "the Makefile's editable install line"
    listed = readme[readme.index("## Install"):readme.index("## The `fsa` command")]
    assert [e for e in extras.group(1).split(",") if f"`{e}`" not in listed] == [], "extras README does not list"
    ci = [line for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line and not line.startswith(("#", "set", "cd"))]
    assert ci == ["make test"] and "make test " in readme, ci


def test_every_verb_help_cites_only_the_repository(capsys):
    # eval and app are registered before their modules land (other issues); every verb that exists is read
    verbs = [v for v, (module, _) in fsa_cli.VERBS.items() if importlib.util.find_spec(module) is not None]
    assert {"export", "lint", "build", "calibrate", "segment", "validate", "dump", "bench", "doctor", "triton",
            "serve"} <= set(verbs)
    bad = {}
    for verb in verbs:
        text = verb_help(verb, capsys)
        found = outside_citations(text) + missing_docs(text)
        if found:
            bad[verb] = found
    assert bad == {}, f"--help cites files outside the repository: {bad}"


@cache
def texts() -> dict[str, str]:
    """Every text a reader of the repository may meet, read once for the tests below (test_docs.py is left out:
    its own examples)."""
    files = [REPO / "Makefile", REPO / "pyproject.toml", REPO / "README.md", REPO / ".ci" / "run"]
    files += sorted((REPO / "docs").glob("*.md"))
    files += [p for root in SOURCE_ROOTS for p in sorted((REPO / root).rglob("*"))
              if p.suffix in (".py", ".sh", ".md", ".toml", ".txt") and p.name != "test_docs.py" and p.is_file()]
    return {str(p.relative_to(REPO)): p.read_text() for p in files}


def test_sources_cite_only_the_repository():
    """Docstrings, comments and messages of the code: a reader of the repository has no `shared/`."""
    code = {n: text for n, text in texts().items() if n.endswith(".py") or n in ("Makefile", "pyproject.toml")}
    # (docs/*.md in the code may be another project's: onnx-tensorrt's)
    bad = {name: found for name, text in code.items() if (found := outside_citations(text))}
    assert bad == {}, f"citations of files outside the repository: {bad}"


def test_no_tracker_numbers_in_code_tests_makefile_tools_or_docs():
    """Users have the repository, not the tracker: a comment, docstring, test or page says why, not "issue N"."""
    bad = {name: found for name, text in texts().items() if (found := tracker_numbers(text))}
    assert bad == {}, f"tracker numbers (say the reason instead): {bad}"
