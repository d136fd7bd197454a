"""Trust: what every verb touched, shown by the files themselves.

A hostile artefact (climbing names, absolute names, symlinks out, an external-data location out,
a deeply nested meta.json) goes through every verb that reads an artefact; sentinel files
outside the folder are hashed before and after, and a `sys.addaudithook` log of open / remove /
rename during the in-process run must not name them. The overwrite policy, output collisions,
the meta.json lock, our temporary names and the class-embedding cache checks follow.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, RTX_ENV, photos, require
from PIL import Image

from fsa_deploy.cli import main
from fsa_deploy.contract import IMAGE_ONNX, META, OUTPUTS_MANIFEST, TEXT_ONNX, TOKENIZER_VOCAB
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate, onnx_locations, tempnames, trust

# ---------------------------------------------------------------- what a run touched

EVENTS = {"open", "os.remove", "os.rename", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.symlink",
          "shutil.copyfile", "os.truncate", "os.chmod"}
_LOG: list[tuple[str, str]] | None = None


def _hook(event: str, args: tuple) -> None:
    if _LOG is None or event not in EVENTS:
        return
    for a in args[:2]:
        if isinstance(a, (str, os.PathLike)):
            _LOG.append((event, os.path.abspath(os.fspath(a))))


sys.addaudithook(_hook)  # cannot be removed; records only while _LOG is a list


def run_logged(call: Callable[[], object]) -> tuple[object, list[tuple[str, str]]]:
    """call() with every open/remove/rename/... it made (Python level) logged; returns (result, log)."""
    global _LOG
    _LOG = []
    try:
        try:
            result = call()
        except SystemExit as e:
            result = e.code
        except FSAError as e:
            result = e
        return result, _LOG
    finally:
        _LOG = None


def tree(folder: Path, skip: tuple[Path, ...] = ()) -> dict[str, str]:
    """Every entry under `folder` (links not followed) -> its content hash, link target or 'dir'."""
    out = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if Path(root, d) not in skip]
        for name in dirs + files:
            p = Path(root, name)
            if p in skip:
                continue
            key = str(p.relative_to(folder))
            if p.is_symlink():
                out[key] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[key] = "dir"
            else:
                out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def touched(log: list[tuple[str, str]], inside: Path, allowed: tuple[Path, ...] = ()) -> list[tuple[str, str]]:
    """Events on paths under `inside` but not under any of `allowed`."""
    inside, allowed = Path(os.path.realpath(inside)), tuple(Path(os.path.realpath(a)) for a in allowed)

    def under(p: Path, root: Path) -> bool:
        return p == root or root in p.parents

    hits = []
    for event, path in log:
        p = Path(os.path.realpath(path)) if os.path.lexists(path) else Path(path)
        if (under(p, inside) or under(Path(path), inside)) and not any(under(p, a) or under(Path(path), a)
                                                                       for a in allowed):
            hits.append((event, path))
    return hits


# ---------------------------------------------------------------- hostile artefacts


def _meta(root: Path) -> dict:
    return json.loads((root / META).read_text())


def _save_meta(root: Path, meta: dict) -> None:
    (root / META).write_text(json.dumps(meta))


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _record_as(root: Path, name: str, target: Path, role: str, drop: str | None = None) -> None:
    meta = _meta(root)
    if drop:
        meta["files"].pop(drop, None)
    meta["files"][name] = {"sha256": _sha(target), "bytes": target.stat().st_size, "role": role}
    _save_meta(root, meta)


def climb_tokenizer(root: Path, outside: Path) -> None:  # fsa triton read it and wrote outside --out
    _record_as(root, "../victim.txt", outside / "victim.txt", "tokenizer", drop=TOKENIZER_VOCAB)


def climb_cache(root: Path, outside: Path) -> None:  # fsa calibrate deleted it
    _record_as(root, "../victim.bin", outside / "victim.bin", "calibration-cache")


def absolute_name(root: Path, outside: Path) -> None:
    _record_as(root, str(outside / "victim.txt"), outside / "victim.txt", "tokenizer")


def backslash_name(root: Path, outside: Path) -> None:
    _record_as(root, "..\\victim.txt", outside / "victim.txt", "tokenizer")


def symlink_image_out(root: Path, outside: Path) -> None:
    """image.onnx replaced by a link to a copy outside: every hash still matches."""
    shutil.copy2(root / IMAGE_ONNX, outside / "elsewhere.onnx")
    (root / IMAGE_ONNX).unlink()
    (root / IMAGE_ONNX).symlink_to(outside / "elsewhere.onnx")


def symlink_meta_out(root: Path, outside: Path) -> None:
    shutil.copy2(root / META, outside / "elsewhere.json")
    (root / META).unlink()
    (root / META).symlink_to(outside / "elsewhere.json")


def engine_source_climbs(root: Path, outside: Path) -> None:
    (root / "image.fp32.rtx.engine").write_bytes(b"not an engine")
    meta = _meta(root)
    meta["files"]["image.fp32.rtx.engine"] = {
        "sha256": _sha(root / "image.fp32.rtx.engine"), "bytes": 13, "role": "engine", "precision": "fp32",
        "engine": {"flavour": "rtx", "source": "../victim.bin"}}
    _save_meta(root, meta)


def location_climbs(root: Path, outside: Path) -> None:
    """image.onnx's largest weight moved to external data named `../victim.bin`; hashes updated."""
    import onnx

    model = onnx.load(str(root / IMAGE_ONNX))
    big = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    length = len(big.raw_data)
    (outside / "victim.bin").write_bytes(big.raw_data)  # the weights a careless loader would read
    big.ClearField("raw_data")
    big.data_location = onnx.TensorProto.EXTERNAL
    for k, v in (("location", "../victim.bin"), ("offset", "0"), ("length", str(length))):
        entry = big.external_data.add()
        entry.key, entry.value = k, v
    onnx.save(model, str(root / IMAGE_ONNX))
    meta = _meta(root)
    meta["files"][IMAGE_ONNX].update(sha256=_sha(root / IMAGE_ONNX), bytes=(root / IMAGE_ONNX).stat().st_size)
    _save_meta(root, meta)


def nested_meta(root: Path, outside: Path) -> None:
    text = (root / META).read_text()
    (root / META).write_text(text.replace('"weights":', '"deep": ' + "[" * 100_000 + "]" * 100_000 + ', "weights":'))


HOSTILE: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "climbing tokenizer name": (climb_tokenizer, "refused"),
    "climbing calibration-cache name": (climb_cache, "refused"),
    "absolute name": (absolute_name, "refused"),
    "backslash name": (backslash_name, "refused"),
    "image.onnx a symlink out": (symlink_image_out, "symlink leading out"),
    "meta.json a symlink out": (symlink_meta_out, "symlink leading out"),
    "engine source climbing": (engine_source_climbs, "refused"),
    "external-data location climbing": (location_climbs, "external-data location"),
    "deeply nested meta.json": (nested_meta, "nested too deeply"),
}


def _serve_prepare(art: str, tmp: Path) -> None:
    """`fsa serve`'s prepare step: the local repository written for the artefact."""
    from fsa_deploy.runtime.serve.repository import RepoOptions, write_repository

    write_repository(art, tmp / "served", RepoOptions(target="local"))


VERBS: dict[str, Callable[[str, Path, str], list[str] | Callable[[], None]]] = {
    "segment": lambda art, tmp, img: ["segment", "--artifact", art, img, "--out", str(tmp / "out"), "--classes",
                                      "cat, dog", "--cache-dir", str(tmp / "cache"), "--threads", "1"],
    "validate": lambda art, tmp, img: ["validate", art, "--classes", "cat, dog", "--images", img],
    "build --engine rtx": lambda art, tmp, img: ["build", art, "--engine", "rtx"],
    "calibrate": lambda art, tmp, img: ["calibrate", art, "--images", img, "--calibration-count", "1"],
    "triton": lambda art, tmp, img: ["triton", art, "--out", str(tmp / "repo")],
    "serve (prepare)": lambda art, tmp, img: lambda: _serve_prepare(art, tmp),
    "lint (artefact graph)": lambda art, tmp, img: ["lint", str(Path(art) / IMAGE_ONNX)],
}


@pytest.fixture(scope="module")
def hostile(tiny_artifact, tmp_path_factory) -> dict[str, Path]:
    """outside/: the sentinels (victim.txt, victim.bin) and one hostile copy of the tiny artefact per case."""
    outside = tmp_path_factory.mktemp("outside")
    (outside / "victim.txt").write_text("a user's file next to the artefact\n")
    (outside / "victim.bin").write_bytes(os.urandom(4096))
    made = {}
    for i, (name, (make, _)) in enumerate(HOSTILE.items()):
        root = outside / f"art{i}"
        shutil.copytree(tiny_artifact.root, root)
        make(root, outside)
        made[name] = root
    return made


@pytest.mark.parametrize("verb", list(VERBS))
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_artefact(case, verb, hostile, tmp_path, capsys):
    root = hostile[case]
    outside = root.parent
    skip = tuple(outside / p.name for p in outside.iterdir() if p.name.startswith("art"))
    before_out, before_art = tree(outside, skip), tree(root)
    img = str(tmp_path / "in.png")
    with Image.open(photos()[0]) as src:
        src.convert("RGB").resize((96, 64)).save(img)
    job = VERBS[verb](str(root), tmp_path, img)
    result, log = run_logged(job if callable(job) else lambda: main(job))
    err = capsys.readouterr().err
    if callable(job):
        assert isinstance(result, FSAError), f"{verb} accepted {case}: {result!r}"
        err = str(result)
    else:
        assert result == 2, f"{verb} on {case}: exit {result}\n{err}"
        assert "Traceback" not in err
        assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    assert HOSTILE[case][1] in err, err
    assert tree(outside, skip) == before_out, "a file outside the artefact changed"
    assert tree(root) == before_art, "the hostile artefact itself changed"
    assert not touched(log, outside, allowed=(root,)), touched(log, outside, allowed=(root,))
    assert not [p for p in tmp_path.rglob("*") if p.name != "in.png" and p.is_file()], "an output was written"


# ---------------------------------------------------------------- containment: the one function


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "a\\b", "..", ".", "", "C:x", "a\x00b", "a\nb",
                                  "x" * 300, 5, None])
def test_contained_refuses_anything_but_a_plain_name(tmp_path, name):
    with pytest.raises(FSAError) as err:
        trust.contained(tmp_path, name, "test")
    assert "\n" not in str(err.value)


def test_contained_follows_links_only_inside(tmp_path):
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "real").write_text("x")
    (tmp_path / "secret").write_text("s")
    (tmp_path / "f" / "inside").symlink_to(tmp_path / "f" / "real")
    (tmp_path / "f" / "out").symlink_to(tmp_path / "secret")
    (tmp_path / "f" / "loop").symlink_to(tmp_path / "f" / "loop")
    assert trust.contained(tmp_path / "f", "inside") == tmp_path / "f" / "inside"
    assert trust.contained(tmp_path / "f", "absent") == tmp_path / "f" / "absent"
    with pytest.raises(FSAError, match="symlink leading out"):
        trust.contained(tmp_path / "f", "out")
    with pytest.raises(FSAError, match="symlink loop|dangling"):
        trust.contained(tmp_path / "f", "loop")


def test_external_data_locations_are_found_across_blocks():
    rec = b"\x0a\x08location\x12\x0dimage.onnx.xy"
    data = os.urandom(5000) + rec + os.urandom(3000)
    assert onnx_locations.locations_in(data) == ["image.onnx.xy"]
    for cut in (4990, 5005, 5012):  # the record cut in two by a block boundary
        scan = onnx_locations.LocationScanner()
        scan.feed(data[:cut])
        scan.feed(data[cut:])
        assert scan.names == {"image.onnx.xy"}, cut


# ---------------------------------------------------------------- overwrite policy


def _tiny_export(out: Path, *extra: str) -> list[str]:
    return ["export", "--out", str(out), "--model", "tiny", "--proxy", "tiny-dino", "--crop", "112", "--random-init",
            "--quiet", *extra]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_export_overwrite_refuses_a_user_folder_with_a_meta_json(tmp_path, capsys):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "meta.json").write_text('{"title": "my thesis"}')
    (proj / "src" / "main.py").write_text("print('hi')\n")
    (proj / "thesis.tex").write_text("\\documentclass{article}\n")
    (tmp_path / ".proj.old").mkdir()
    (tmp_path / ".proj.old" / "notes.txt").write_text("mine\n")
    before = tree(tmp_path)
    code, log = run_logged(lambda: main(_tiny_export(proj, "--overwrite")))
    err = capsys.readouterr().err
    assert code == 2 and "not an artefact folder" in err and len(err.strip().splitlines()) == 1, err
    assert tree(tmp_path) == before
    assert not [e for e in log if e[0] != "open"], log  # nothing removed, renamed or made


def test_overwrite_replaces_an_artefact_and_nothing_else(tiny_artifact, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    (tmp_path / ".art.old").mkdir()  # a name a user could choose: never swept
    (tmp_path / ".art.old" / "keep.txt").write_text("mine\n")
    stale = tmp_path / f".art.{tempnames.MARKER}-{_dead_pid()}-x1y2"  # a killed export's staging folder
    stale.mkdir()
    (stale / "image.onnx").write_bytes(b"half")
    live = tmp_path / f".art.{tempnames.MARKER}-{os.getpid()}-live"  # a live run's: kept
    live.mkdir()
    def export_again() -> None:  # what `fsa export --overwrite` does once its graphs are made: the swap
        with gate.staging_folder(art, overwrite=True) as work:
            for f in Path(tiny_artifact.root).iterdir():
                shutil.copy2(f, work / f.name)

    assert main(_tiny_export(art)) == 2 and "pass --overwrite" in capsys.readouterr().err
    _, log = run_logged(export_again)
    A.Artifact.load(art).verify_all()
    assert (tmp_path / ".art.old" / "keep.txt").read_text() == "mine\n"
    assert not stale.exists() and live.exists()
    live.rmdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".art.old", "art"], "a moved-aside or temp folder is left"
    # the old artefact went aside under our unique name, the new one took its place, then the old one went
    renames = [(e, p) for e, p in log if e in ("os.rename", "shutil.rmtree")]
    aside = [i for i, (e, p) in enumerate(renames) if e == "os.rename" and p == str(art)]
    assert aside, renames
    old = renames[aside[0] + 1][1]
    assert tempnames.OLD_MARKER in Path(old).name
    removed = [i for i, (e, p) in enumerate(renames) if e == "shutil.rmtree" and p == old]
    put = [i for i, (e, p) in enumerate(renames) if e == "os.rename" and i > aside[0] + 1]
    assert removed and put and put[0] < removed[0], renames


def test_lint_json_never_over_an_artefact_or_a_users_file(tiny_artifact, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    graph = str(art / IMAGE_ONNX)
    before = tree(art)
    for target, words in ((art / META, "would overwrite meta.json"), (art / TEXT_ONNX, "would overwrite text.onnx"),
                          (art / "report.json", "inside the artefact folder")):
        assert main(["lint", graph, "--json", str(target)]) == 2
        assert words in capsys.readouterr().err
    assert tree(art) == before
    mine = tmp_path / "mine.json"
    mine.write_text("my notes\n")
    assert main(["lint", graph, "--json", str(mine)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err and mine.read_text() == "my notes\n"
    assert main(["lint", graph, "--json", str(mine), "--overwrite"]) == 0
    assert json.loads(mine.read_text())["passed"] is True


def test_triton_out_never_an_artefact_or_a_users_folder(tiny_artifact, tmp_path, capsys):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    user = tmp_path / "user"
    (user / "mymodel").mkdir(parents=True)
    (user / "mymodel" / "config.pbtxt").write_text('name: "mymodel"\n')
    (user / "config.pbtxt").write_text("mine\n")
    before = tree(tmp_path)
    for out, words in ((art, "inside the artefact folder"), (art / "repo", "inside the artefact folder"),
                       (user, "fsa triton did not write")):
        for extra in ((), ("--overwrite",)):
            assert main(["triton", str(art), "--out", str(out), *extra]) == 2
            assert words in capsys.readouterr().err
    assert tree(tmp_path) == before
    repo = tmp_path / "repo"
    assert main(["triton", str(art), "--out", str(repo)]) == 0
    first = tree(repo)
    assert main(["triton", str(art), "--out", str(repo)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["triton", str(art), "--out", str(repo), "--overwrite"]) == 0
    assert tree(repo) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art", "repo", "user"]


# ---------------------------------------------------------------- outputs never collide with inputs


def test_segment_outputs_never_overwrite_inputs(tiny_artifact, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    with Image.open(photos()[0]) as im:
        small = im.convert("RGB").resize((96, 64))
    small.save(src / "x.jpg")
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(src / "x_overlay.png")
    before = tree(src)
    opts = ["--classes", "cat, dog", "--cache-dir", str(tmp_path / "cache"), "--threads", "1"]
    argv = ["segment", "--artifact", str(tiny_artifact.root), str(src / "x.jpg"), str(src / "x_overlay.png")]
    code, log = run_logged(lambda: main([*argv, "--out", str(src), *opts]))
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "x_overlay.png" in err and "x.jpg" in err and "would overwrite the input" in err
    assert tree(src) == before
    assert not [e for e in log if str(src) in e[1]], "refused before any work: nothing under the inputs touched"
    for _ in range(2):  # a second run into the same --out replaces the verb's own outputs
        assert main([*argv, "--out", str(tmp_path / "out"), *opts]) == 0
        names = sorted(p.name for p in (tmp_path / "out").iterdir())
        assert names == [OUTPUTS_MANIFEST, "x.json", "x.png", "x_overlay.png", "x_overlay_png.json",
                         "x_overlay_png.png", "x_overlay_png_overlay.png"], names
    umask = os.umask(0o022)
    os.umask(umask)  # renamed from gate.atomic's temporary (mkstemp: 0600): as readable as any other file
    assert {oct(p.stat().st_mode & 0o777) for p in (tmp_path / "out").iterdir()} == {oct(0o666 & ~umask)}
    assert tree(src) == before


# ---------------------------------------------------------------- one writer of meta.json at a time

# The race's window, opened from the test: in the process this runs in, each save of meta.json waits 1.5 s between
# its re-read under the lock and its write (the product has no such hook)
PAUSE = """
import contextlib, time
from fsa_deploy.runtime import artifact as _A
_lock, _write, _held = _A.meta_lock, _A.gate.write_json, []

@contextlib.contextmanager
def _holding(root):
    with _lock(root):
        _held.append(root)
        try:
            yield
        finally:
            _held.pop()

def _paused_write(path, *args, **kw):
    if _held:
        time.sleep(1.5)
    return _write(path, *args, **kw)

_A.meta_lock, _A.gate.write_json = _holding, _paused_write
"""
WRITER = PAUSE + """
import sys, time
from fsa_deploy.runtime.artifact import Artifact
art = Artifact.load(sys.argv[1])
time.sleep(1.0)  # both processes have loaded meta.json before either saves
(art.root / sys.argv[2]).write_text(sys.argv[2])
art.record(sys.argv[2], role="note")
art.save()
"""


def test_two_writers_keep_both_records(tiny_artifact, tmp_path):
    """Two processes load, record and save at once; PAUSE holds each between meta.json's read and write, so
    without the lock (or without the re-read) one record is lost."""
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(art), name], cwd=REPO,
                              stderr=subprocess.PIPE, text=True) for name in ("a.note", "b.note")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    files = A.Artifact.load(art).files()
    assert {"a.note", "b.note"} <= set(files), sorted(files)
    A.Artifact.load(art).verify_all()
    assert [p.name for p in art.iterdir() if p.name.startswith(".")] == [".meta.json.lock"]


def test_build_and_another_writer_at_once_keep_both_records(tiny_artifact, tmp_path):
    """A real `fsa build --engine rtx` and a second writer on one folder, each held between
    meta.json's read and write: the engine's record and the other one both survive."""
    require("tensorrt_rtx", RTX_ENV)
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    fsa = PAUSE + "import sys\nfrom fsa_deploy.cli import main\nsys.exit(main())"
    build = subprocess.Popen([sys.executable, "-c", fsa, "build", str(art), "--engine", "rtx", "--no-text",
                              "--max-batch", "2"], cwd=REPO, stderr=subprocess.PIPE, text=True)
    other = subprocess.Popen([sys.executable, "-c", WRITER, str(art), "c.note"], cwd=REPO,
                             stderr=subprocess.PIPE, text=True)
    assert other.wait(timeout=300) == 0, other.stderr.read()
    assert build.wait(timeout=300) == 0, build.stderr.read()
    files = A.Artifact.load(art).files()
    assert "c.note" in files and [n for n, i in files.items() if i.get("role") == "engine"], sorted(files)


def test_a_held_lock_is_one_clear_line_after_the_wait(tiny_artifact, tmp_path, monkeypatch):
    from filelock import FileLock

    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    loaded = A.Artifact.load(art)
    before = (art / META).read_bytes()
    monkeypatch.setenv("FSA_LOCK_TIMEOUT", "0.3")
    with FileLock(str(art / f".{META}.lock")):
        held = subprocess.run([sys.executable, "-c", "import sys; from fsa_deploy.cli import main; "
                               "from fsa_deploy.runtime.artifact import Artifact; a = Artifact.load(sys.argv[1]); "
                               "a.save()", str(art)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert held.returncode != 0 and "FSA_LOCK_TIMEOUT" in held.stderr, held.stderr
    assert (art / META).read_bytes() == before
    loaded.save()  # free again: the same process saves
    assert A.Artifact.load(art).files() == loaded.files()


def test_forget_is_merged_too(tiny_artifact, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifact.root, art)
    one, two = A.Artifact.load(art), A.Artifact.load(art)
    (art / "n1").write_text("1")
    one.record("n1", role="note")
    one.save()
    two.forget(TOKENIZER_VOCAB)
    two.save()  # drops the tokenizer, keeps one's record
    files = A.Artifact.load(art).files()
    assert "n1" in files and TOKENIZER_VOCAB not in files


# ---------------------------------------------------------------- temporary names: ours, swept when stale


def test_sweep_removes_only_our_stale_names(tmp_path):
    dead = _dead_pid()
    stale = [f".x.{tempnames.MARKER}-{dead}-ab12.json", f".art.{tempnames.OLD_MARKER}-{dead}-cd34"]
    kept = [f".x.{tempnames.MARKER}-{os.getpid()}-live.json", ".out.old", ".x.tmp", "x.fsa-tmp-1-a", ".x.fsa-tmp-abc"]
    for n in stale + kept:
        (tmp_path / n).mkdir() if "old" in n and tempnames.OLD_MARKER in n else (tmp_path / n).write_text("x")
    with gate.atomic(tmp_path / "x.json") as tmp:
        assert tempnames.MARKER in tmp.name and str(os.getpid()) in tmp.name
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(kept + ["x.json", OUTPUTS_MANIFEST])


def test_modelopt_temp_files_go_in_a_folder_we_own(tmp_path):
    import tempfile

    from fsa_deploy.calibration.quantize import owned_tempdir

    system = tempfile.gettempdir()
    with owned_tempdir(tmp_path / "tmp"):
        fd, name = tempfile.mkstemp()
        os.close(fd)
        assert Path(name).parent == tmp_path / "tmp" and os.environ["TMPDIR"] == str(tmp_path / "tmp")
    assert tempfile.gettempdir() == system


# ---------------------------------------------------------------- class-embedding cache entries are checked


def _encode(tokens: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((tokens.shape[1], 16)).astype(np.float32)
    return tokens.astype(np.float32) @ w


BAD_ENTRIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "zeros": np.zeros_like,
    "NaN": lambda t: np.full_like(t, np.nan),
    "wrong shape": lambda t: np.concatenate([t, t]),
    "wrong dtype": lambda t: t.astype(np.float64),
    "not unit rows": lambda t: t * 3,
    "3-d": lambda t: t[None],
}


@pytest.mark.parametrize("bad", list(BAD_ENTRIES))
def test_a_bad_cache_entry_is_removed_and_recomputed(tmp_path, bad):
    from fsa_deploy.runtime.text import cache_key, cached_classifier

    queries, templates = ["cat", "dog"], ["a photo of a {}."]
    good, hit = cached_classifier(tmp_path, "m", _encode, queries, templates)
    assert not hit
    entry = tmp_path / f"text-{cache_key('m', queries[:1], templates)}.npy"  # one entry per class
    np.save(entry, BAD_ENTRIES[bad](good[:1]))
    again, hit = cached_classifier(tmp_path, "m", _encode, queries, templates)
    assert not hit and np.array_equal(again, good)
    assert np.array_equal(np.load(entry), good[:1]), "the bad entry was replaced by a good one"
    assert cached_classifier(tmp_path, "m", _encode, queries, templates)[1] is True


def test_a_cache_entry_that_is_a_symlink_is_not_followed(tmp_path):
    from fsa_deploy.runtime.text import cache_key, cached_classifier

    queries, templates = ["cat", "dog"], ["a photo of a {}."]
    good, _ = cached_classifier(None, "m", _encode, queries, templates)
    victim = tmp_path / "victim.npy"
    np.save(victim, good[:1])  # even a valid-looking entry elsewhere is not trusted through a link
    before = victim.read_bytes()
    (tmp_path / "cache").mkdir()
    entry = tmp_path / "cache" / f"text-{cache_key('m', queries[:1], templates)}.npy"  # one entry per class
    entry.symlink_to(victim)
    t, hit = cached_classifier(tmp_path / "cache", "m", _encode, queries, templates)
    assert not hit and np.array_equal(t, good) and victim.read_bytes() == before
    assert not entry.is_symlink()


def test_a_nan_result_is_never_kept(tmp_path):
    from fsa_deploy.runtime.text import cached_classifier

    t, hit = cached_classifier(tmp_path, "m", lambda tok: np.full((len(tok), 16), np.nan, np.float32), ["cat"],
                               ["{}"])
    assert np.isnan(t).all() and not hit and not list(tmp_path.glob("text-*.npy"))


# ---------------------------------------------------------------- class names


def test_classes_bom_duplicates_synonyms_control_characters(tmp_path, capsys):
    from fsa_deploy.runtime.text import Vocabulary

    f = tmp_path / "c.txt"
    f.write_bytes("\ufeffcat\ndog\n".encode())
    assert Vocabulary.from_file(f).names == ["cat", "dog"]
    for text in ("cat, cat", "cat, Cat", "cat; kitty, cat; kitty"):
        with pytest.raises(FSAError, match="repeats item 1"):
            Vocabulary.parse(text)
    v = Vocabulary.parse("background; bed, bed, table")  # COCO-Object: bed is a background synonym and a class
    assert v.names == ["background", "bed", "table"]
    warn = capsys.readouterr().err
    assert warn.count("\n") == 1 and "'bed'" in warn
    for text in ("cat\x1b[31m, dog", "a\x00b", "cat\u202e"):
        with pytest.raises(FSAError, match="control character"):
            Vocabulary.parse(text)


def test_a_long_class_name_is_cut_in_the_legend(tiny_artifact, tmp_path):
    from fsa_deploy.runtime.segmenter import Segmenter

    seg = Segmenter.from_artifact(tiny_artifact.root, "onnx", threads=1, cache_dir=None)
    seg.set_classes(["x" * 3000, "y" * 3000])  # whichever is present has a long name
    result = seg.segment(np.full((40, 60, 3), 128, np.uint8))
    overlay = result.overlay()
    assert overlay.width < 1000 and result.classes == ["x" * 3000, "y" * 3000]
