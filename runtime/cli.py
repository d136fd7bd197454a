"""The `fsa segment` verb: label maps, overlays and a JSON summary per image.

A bad input is reported on stderr (one line naming it) and skipped; the others are
written; the exit code is 2 at the end if any failed. Nothing is written for a failed
image (runtime.segmenter writes each file under a temporary name first).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from fsa_deploy.runtime.text import add_vocabulary_args, vocabulary_from_args

from fsa_deploy.contract import BACKENDS
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import add_ranged
from fsa_deploy.spellings import add_old_spellings

PROG = "fsa segment"


def add_segment(sub, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help=help_text, description=(
        "Segment images with an artefact folder: for each input NAME.ext, write NAME.png (palette PNG of class "
        "indices, original size), NAME_overlay.png (coloured masks and a legend) and NAME.json (classes present "
        "with pixel fractions, timings, backend, artefact hash) to --out."))
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files, or folders (their image files, sorted)")
    p.add_argument("--artifact", required=True, metavar="DIR", help="artefact folder written by `fsa export`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: a TensorRT engine when this machine can run it, else ONNX Runtime (default auto)")
    add_vocabulary_args(p)
    add_ranged(p, "--prob-thd", "pixels whose top class probability is below this become class 0 (default 0)",
               default=0.0)
    add_ranged(p, "--batch", "crops per backend call (default 16)", default=16)
    add_ranged(p, "--stride", "sliding-window stride, at most the crop size (default crop // 3)", default=None)
    add_ranged(p, "--short-side", "resize so the short side is at most this (default the crop size)", default=None)
    add_ranged(p, "--long-side", "resize so the long side is at most this (default crop * 2048 / 336)", default=None)
    p.add_argument("--graph", metavar="FILE", help="graph or engine file of the folder to run (default: --backend's "
                                                   "choice; as `fsa eval --graph` and `fsa validate --graph`)")
    add_ranged(p, "--threads", "ONNX Runtime CPU threads (default: all cores)", default=None)
    p.add_argument("--precision", default=None, help="TensorRT image engine to use when several were built")
    cache = p.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", metavar="DIR", help="class-embedding cache (default $FSA_CACHE_DIR or "
                                                          "~/.cache/fsa-deploy)")
    cache.add_argument("--no-cache", action="store_true", help="always recompute the class embeddings")
    add_old_spellings(p, "segment")
    p.set_defaults(func=run_segment)
    return p


OUTPUTS = ("{}.png", "{}_overlay.png", "{}.json")  # what `fsa segment` writes per image


def unique_stems(files: Sequence[Path]) -> list[str]:
    """Output names: the input's stem, with its suffix (then a counter) added when the outputs of
    two inputs would share a name (x.png + x.jpg, x.png + x_overlay.png)."""
    taken: set[str] = set()
    stems = []
    for f in files:
        base = f.stem
        tries = [base, f"{base}_{f.suffix.lstrip('.')}" if f.suffix else f"{base}_1"]
        for stem in itertools.chain(tries, (f"{base}_{n}" for n in itertools.count(2))):
            names = {o.format(stem).casefold() for o in OUTPUTS}  # casefold: macOS and Windows file systems
            if not names & taken:
                break
        taken |= names
        stems.append(stem)
    return stems


def _tqdm():
    """tqdm when installed (the export extra has it): a bar over many images; the base install prints lines."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


def _write(line: str, file=None) -> None:
    bar = _tqdm()
    if bar is None:
        print(line, file=file or sys.stdout, flush=True)
    else:
        bar.write(line, file=file)


def _report(message: str) -> None:
    from fsa_deploy.errors import escape

    _write(f"{PROG}: error: {escape(message)}", file=sys.stderr)


def run_segment(args: argparse.Namespace) -> int:
    from fsa_deploy.runtime.images import expand_images
    from fsa_deploy.runtime.segmenter import Segmenter
    from fsa_deploy.runtime.text import usable_cache_dir

    files, errors = expand_images(args.images)
    for line in errors:
        _report(line)
    total = len(files) + len(errors)
    failed = len(errors)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FSAError(f"--out {out}: exists and is not a folder")
    check_outputs(out, files)
    cache = None if args.no_cache else usable_cache_dir(args.cache_dir)
    if files:
        artifact, backend = args.artifact, args.backend
        if args.graph:
            from fsa_deploy.runtime.artifact import Artifact
            from fsa_deploy.runtime.backends.graph import open_graph

            artifact = Artifact.load(args.artifact)
            backend = open_graph(artifact, args.graph, args.backend, threads=args.threads,
                                 precision=args.precision)[0]
        seg = Segmenter.from_artifact(artifact, backend, threads=args.threads, precision=args.precision,
                                      max_batch=args.batch, cache_dir=cache, prob_thd=args.prob_thd,
                                      stride=args.stride, short_side=args.short_side, long_side=args.long_side)
        print(f"backend: {seg.backend.name} ({seg.backend_reason})", flush=True)
        seg.set_classes(vocabulary_from_args(args))
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FSAError(f"--out {out}: cannot create the folder ({e.strerror or e})") from e
        todo = list(zip(files, unique_stems(files)))
        tqdm = _tqdm()
        bar = todo if tqdm is None else tqdm(todo, disable=len(files) <= 1, unit="image", file=sys.stderr)
        for path, stem in bar:
            if not _segment_one(seg, path, out, stem):
                failed += 1
    if failed:
        raise FSAError(f"{failed} of {total} images failed")
    return 0


def check_outputs(out: Path, files: Sequence[Path]) -> None:
    """Before any work: no output may be an input of the run (--out the input folder, x_overlay.png
    given as an input) or replace meta.json or a file it records (--out inside an artefact folder),
    and --out must be creatable."""
    from fsa_deploy.runtime.schema import refuse_artifact_file

    from fsa_deploy.errors import escape

    inputs = {os.path.normcase(os.path.realpath(f)): f for f in files}
    for f, stem in zip(files, unique_stems(files)):
        for pattern in OUTPUTS:
            target = out / pattern.format(stem)
            refuse_artifact_file(target, "--out")
            clash = inputs.get(os.path.normcase(os.path.realpath(target)))
            if clash is not None:
                raise FSAError(f"--out {escape(str(out))}: the result {escape(target.name)} of {escape(str(f))} would "
                               f"overwrite the input {escape(str(clash))}; choose another --out")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise FSAError(f"--out {out}: cannot create or write it ({parent} is not a writable folder)")


def _segment_one(seg, path: Path, out: Path, stem: str) -> bool:
    """Segment and write one image; False (after a one-line report) if it failed."""
    targets = [out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"]
    try:
        if any(os.path.realpath(t) == os.path.realpath(path) for t in targets):  # never raises on a link loop
            raise FSAError(f"{path}: writing its results to {out} would overwrite it; choose another --out")
        written = seg.segment(path).save(out, stem)
    except FSAError as e:
        msg = str(e)
        _report(msg if msg.startswith(str(path)) else f"{path}: {msg}")
        return False
    except OSError as e:
        _report(f"{path}: could not write its results to {out} ({e.strerror or e})")
        return False
    _write(str(written["overlay"]))
    return True
