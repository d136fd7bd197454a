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
from dataclasses import replace
from pathlib import Path

from fsa_deploy.contract import BACKENDS
from fsa_deploy.errors import FSAError, escape
from fsa_deploy.log import logger
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.graph import open_graph
from fsa_deploy.runtime.images import expand_images
from fsa_deploy.runtime.schema import refuse_artifact_file
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.text import add_vocabulary_args, usable_cache_dir, vocabulary_from_args
from fsa_deploy.runtime.video.outputs import output_paths
from fsa_deploy.runtime.video.run import VideoOptions, VideoRun
from fsa_deploy.runtime.video.sources import Selection, SourceSpec, classify
from fsa_deploy.spellings import add_old_spellings

PROG = "fsa segment"
LOG = logger("runtime")


def add_segment(sub, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser("segment", help=help_text, description=(
        "Segment images with an artefact folder: for each input NAME.ext, write NAME.png (palette PNG of class "
        "indices, original size), NAME_overlay.png (coloured masks and a legend) and NAME.json (classes present "
        "with pixel fractions, timings, backend, artefact hash) to --out."))
    p.add_argument("images", nargs="+", metavar="IMAGES",
                   help="image files, or folders (their image files, sorted); or video sources: video files (mp4, mkv, "
                        "avi, mov, webm, ...), image sequences (a quoted glob 'f/*.png' or 'f/%%06d.png'), cameras "
                        "(/dev/videoN or an index), streams (rtsp://, rtmp://, http(s)://, udp://); see docs/VIDEO.md")
    p.add_argument("--artifact", required=True, metavar="DIR", help="artefact folder written by `fsa export`")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="auto: a TensorRT engine when this machine can run it, else ONNX Runtime (default auto)")
    add_vocabulary_args(p)
    add_ranged(p, "--prob-thd", "pixels whose top class probability is below this get label 255, "
               "\"unlabelled\" (65535 past 255 classes; not class 0) (default 0)", default=0.0)
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
    add_video_args(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace result files in --out that fsa did not write (its own are replaced anyway)")
    add_old_spellings(p, "segment")
    p.set_defaults(func=run_segment)
    return p


OUTPUTS = ("{}.png", "{}_overlay.png", "{}.json")  # what `fsa segment` writes per image


def add_video_args(p: argparse.ArgumentParser) -> None:
    """The options of a video source (fsa segment; fsa app --source takes the selection ones)."""
    g = p.add_argument_group("video sources (the `video` extra: PyAV)")
    add_ranged(g, "--every", "keep one frame in N (default 1: every frame)", verb="segment", default=1)
    add_ranged(g, "--max-fps", "keep at most X frames per second of source time (default: all)", verb="segment",
               default=None)
    add_ranged(g, "--start", "start X seconds into the source (default 0)", verb="segment", default=0.0)
    add_ranged(g, "--duration", "stop after X seconds of source time (default: the whole source)", verb="segment",
               default=None)
    add_ranged(g, "--limit", "stop after N frames written (default: no limit)", verb="segment", default=None)
    add_ranged(g, "--stream-timeout", "seconds a camera or stream may stay silent (opening or between frames) "
               "before it counts as stalled (default 10)", verb="segment", default=10.0)
    add_ranged(g, "--sequence-fps", "frame rate of an image sequence's overlay video (default 25)", verb="segment",
               default=25.0)
    g.add_argument("--frames", action="store_true",
                   help="write NAME/000000.png, ... (a label PNG per frame) instead of NAME.labels.npz")


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


def _result_line(line: str) -> None:
    """A written result's line on stdout (the verb's product), below an open progress bar."""
    bar = _tqdm()
    if bar is None:
        print(line, flush=True)
    else:
        bar.write(line, file=sys.stdout)


def _report(message: str) -> None:
    """One input's error line; the run goes on with the others."""
    LOG.error(f"{PROG}: error: {escape(message)}")


def split_sources(items: Sequence[str]) -> tuple[list[str], list[SourceSpec], list[str]]:
    """(image arguments, video SourceSpecs with unique names, error lines) of the command line."""
    images: list[str] = []
    videos: list[SourceSpec] = []
    errors: list[str] = []
    for item in items:
        try:
            spec = classify(str(item))
        except FSAError as e:
            errors.append(str(e))
            continue
        if spec is None:
            images.append(item)
        else:
            videos.append(spec)
    return images, videos, errors


def run_segment(args: argparse.Namespace) -> int:
    items, videos, errors = split_sources(args.images)
    if errors and len(args.images) == 1:  # the only source: its line is the run's one line
        raise FSAError(errors[0])
    files, more = expand_images(items) if items else ([], [])
    errors += more
    for line in errors:
        _report(line)
    total = len(files) + len(videos) + len(errors)
    failed = len(errors)
    out = Path(args.out)
    check_outputs(out, files, getattr(args, "overwrite", False))
    videos = video_names(videos, unique_stems(files), out, getattr(args, "overwrite", False))
    cache = None if args.no_cache else usable_cache_dir(args.cache_dir)
    if files or videos:
        artifact, backend = args.artifact, args.backend
        if args.graph:
            artifact = Artifact.load(args.artifact)
            backend = open_graph(artifact, args.graph, args.backend, threads=args.threads,
                                 precision=args.precision)[0]
        seg = Segmenter.from_artifact(artifact, backend, threads=args.threads, precision=args.precision,
                                      batch=args.batch, cache_dir=cache, prob_thd=args.prob_thd,
                                      stride=args.stride, short_side=args.short_side, long_side=args.long_side)
        print(f"backend: {seg.backend.name} ({seg.backend_reason})", flush=True)
        seg.set_classes(vocabulary_from_args(args))
        todo = list(zip(files, unique_stems(files)))
        tqdm = _tqdm()
        quiet = len(files) <= 1 or getattr(args, "quiet", False)  # -q: no bar either
        bar = todo if tqdm is None else tqdm(todo, disable=quiet, unit="image", file=sys.stderr)
        for path, stem in bar:
            if not _segment_one(seg, path, out, stem):
                failed += 1
        for spec in videos:
            if not _segment_video(seg, spec, out, args, alone=total == 1):
                failed += 1
    if failed:
        raise FSAError(f"{failed} of {total} {'inputs' if videos else 'images'} failed")
    return 0


def video_names(videos: list, image_stems: Sequence[str], out: Path, overwrite: bool = False) -> list:
    """Video sources with output names that clash with no image's and no other source's (a counter
    added), checked through the output gate like the images' outputs."""

    taken = {s.casefold() for s in image_stems}
    named = []
    for spec in videos:
        name = spec.name
        for n in itertools.count(2):
            if name.casefold() not in taken:
                break
            name = f"{spec.name}_{n}"
        taken.add(name.casefold())
        spec = replace(spec, name=name)
        for target in output_paths(out, name, False).values():
            refuse_artifact_file(target, "--out")
            if Path(target).suffix:  # a file (NAME/ frame folders are made by the run)
                gate.check_file(target, "--out", overwrite)
        named.append(spec)
    return named


def _segment_video(seg, spec, out: Path, args: argparse.Namespace, alone: bool = False) -> bool:
    """One video source; False (after a one-line report) if nothing could be written. `alone`: the
    run's only input, whose error is the run's one line (FSAError, exit 2)."""
    selection = Selection(every=args.every, max_fps=args.max_fps, start=args.start, duration=args.duration,
                          limit=args.limit)
    options = VideoOptions(selection, stream_timeout=args.stream_timeout, sequence_fps=args.sequence_fps,
                           frames_folder=args.frames)
    try:
        summary = VideoRun(seg, spec, out, options).run()
    except FSAError as e:
        msg = str(e)
        named = msg.startswith((spec.text, escape(spec.text)))
        if alone:
            raise FSAError(msg if named else f"{spec.text}: {msg}") from None
        _report(msg if named else f"{escape(spec.text)}: {msg}")
        return False
    except OSError as e:
        line = f"{escape(spec.text)}: could not write its results to {out} ({e.strerror or e})"
        if alone:
            raise FSAError(line) from None
        _report(line)
        return False
    dropped = f", {summary['frames_dropped']} dropped (live source, model slower than it)" \
        if summary["frames_dropped"] else ""
    _result_line(f"{out / summary['outputs']['overlay']}: {summary['frame_count']} frames, "
           f"{summary['frames_per_s']:.2f} frames/s{dropped}")
    if summary["stopped_by"] and summary["stopped_by"] != "signal":
        LOG.warning(f"{PROG}: warning: {escape(spec.text)}: {summary['stopped_by']}; the {summary['frame_count']} "
                    "frames before it are written")
    return True


def check_outputs(out: Path, files: Sequence[Path], overwrite: bool = False) -> None:
    """Before any work, through the output gate: --out a folder we may write (not inside an artefact
    folder, created, writable); no result may be an input of the run (--out the input folder,
    x_overlay.png given as an input), meta.json or a file it records, a special file, or (without
    --overwrite) an existing file fsa did not write."""
    inputs = {os.path.normcase(os.path.realpath(f)): f for f in files}
    targets = [(f, out / pattern.format(stem)) for f, stem in zip(files, unique_stems(files)) for pattern in OUTPUTS]
    for f, target in targets:  # before the folder is made: an input is never touched
        refuse_artifact_file(target, "--out")
        clash = inputs.get(os.path.normcase(os.path.realpath(target)))
        if clash is not None:
            raise FSAError(f"--out {escape(str(out))}: the result {escape(target.name)} of {escape(str(f))} would "
                           f"overwrite the input {escape(str(clash))}; choose another --out")
    gate.check_folder(out, "--out", create=False)  # made when the first result is written
    plan = gate.Outputs()
    for _f, target in targets:
        plan.file(target, "--out", overwrite)


def _segment_one(seg, path: Path, out: Path, stem: str) -> bool:
    """Segment and write one image; False (after a one-line report) if it failed."""
    targets = [out / f"{stem}.png", out / f"{stem}_overlay.png", out / f"{stem}.json"]
    try:
        if any(os.path.realpath(t) == os.path.realpath(path) for t in targets):  # never raises on a link loop
            raise FSAError(f"{path}: writing its results to {out} would overwrite it; choose another --out")
        written = seg.segment(path).write(out, stem)
    except FSAError as e:
        msg = str(e)
        _report(msg if msg.startswith(str(path)) else f"{path}: {msg}")
        return False
    except OSError as e:
        _report(f"{path}: could not write its results to {out} ({e.strerror or e})")
        return False
    _result_line(str(written["overlay"]))
    return True
