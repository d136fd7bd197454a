"""`make bench-video`: a video through `fsa segment` against the same frames as PNG images.

For each model (the tiny export; with --full DIR a full-size artefact too) one clip is made from
scikit-image's chelsea.png (a pan and a zoom, --size, 12 fps), its frames saved as PNGs, and in
one process with one Segmenter (ONNX Runtime CPU, the same classes):
- images/s: `fsa segment`'s per-image loop on the PNGs (load, segment, write the three files);
- frames/s: runtime.video's pipeline on the mp4 (decode, segment, overlay H.264, labels, JSON).
Both include writing their outputs. Then peak RSS of the video run on N and 4N frames, each in a
fresh process: memory flat in the video's length.

    python -m benchmarks.video_throughput --work out/bench/video --json out/bench/video.json \\
        [--full out/b16] [--gif docs/video.gif]
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from benchmarks.clips import decoded_frames, pan_zoom_frames, write_clip
from fsa_deploy.cli import OneLineParser
from fsa_deploy.export.tiny import tiny_artifact
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.gate import write_json
from fsa_deploy.runtime.images import encode, sample_photos
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.video.run import VideoOptions, VideoRun
from fsa_deploy.runtime.video.sources import classify

CLASSES = "cat, floor, blanket, wall, sky, grass, person"
FPS = 12


def make_clip(work: Path, frames: int, size: tuple[int, int], tag: str) -> tuple[Path, list[Path]]:
    chelsea = next(p for p in sample_photos() if Path(p).name == "chelsea.png")
    folder = gate.mkdir(work / f"{tag}-{frames}")
    clip = folder / f"{tag}.mp4"
    with gate.atomic(clip) as tmp:
        write_clip(tmp, pan_zoom_frames(chelsea, frames, size), FPS, fmt="mp4")
    gate.mkdir(folder / "png")
    pngs = []
    for i, rgb in enumerate(decoded_frames(clip)):  # the very frames the video run decodes
        pngs.append(folder / "png" / f"{i:04d}.png")
        gate.write_bytes(pngs[-1], encode(Image.fromarray(rgb)))
    return clip, pngs


def compare(art: Path, clip: Path, pngs: list[Path], out: Path, threads: int | None) -> dict:
    """images/s of the per-image loop and frames/s of the video pipeline, one Segmenter, same frames."""
    seg = Segmenter.from_artifact(art, "onnx", threads=threads, cache_dir=None).set_classes(CLASSES)
    seg.segment(pngs[0])  # warm-up: ORT's first run
    t0 = time.perf_counter()
    for p in pngs:
        seg.segment(p).write(out / "images", p.stem)
    images_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    spec = classify(str(clip))
    assert spec is not None, clip
    summary = VideoRun(seg, spec, out / "video", VideoOptions(progress=False)).run()
    video_s = time.perf_counter() - t0
    n = len(pngs)
    return {"frames": n, "images_per_s": n / images_s, "frames_per_s": summary["frame_count"] / video_s,
            "ratio": (summary["frame_count"] / video_s) / (n / images_s), "video_frames": summary["frame_count"]}


def peak_rss_child(art: Path, clip: Path, out: Path, threads: int | None) -> float:
    """Peak RSS (MiB) of a fresh process that runs the video pipeline on `clip`: its VmHWM (Linux), which
    a new program starts afresh (ru_maxrss would carry this parent's high-water mark across exec)."""
    code = ("from fsa_deploy.runtime.segmenter import Segmenter; "
            "from fsa_deploy.runtime.video.run import VideoOptions, VideoRun; "
            "from fsa_deploy.runtime.video.sources import classify; from pathlib import Path; "
            f"seg = Segmenter.from_artifact({str(art)!r}, 'onnx', threads={threads!r}, cache_dir=None)"
            f".set_classes({CLASSES!r}); "
            f"VideoRun(seg, classify({str(clip)!r}), Path({str(out)!r}), VideoOptions(progress=False)).run(); "
            "print(next(int(ln.split()[1]) for ln in open('/proc/self/status') if ln.startswith('VmHWM')) / 1024)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(proc.stdout.strip().splitlines()[-1])


def gif(overlay: Path, target: Path, frames: int = 48, step: int = 2, width: int = 240) -> None:
    """Every `step`-th of the first frames of an overlay video, `width` wide, as a looping GIF under
    1 MB (docs/)."""
    import av

    with av.open(str(overlay)) as c:
        images = [f.to_image() for i, f in zip(range(frames), c.decode(video=0)) if i % step == 0]
    images = [im.resize((width, round(im.height * width / im.width))).quantize(64) for im in images]
    gate.write_bytes(target, encode(images[0], "GIF", save_all=True, append_images=images[1:],
                                    duration=int(1000 * step / FPS), loop=0, optimize=True))


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__)
    p.add_argument("--work", default="out/bench/video")
    p.add_argument("--json", default="out/bench/video.json")
    p.add_argument("--full", metavar="DIR", help="a full-size artefact folder (ViT-B-16 + DINO B/8 at 336) to time too")
    p.add_argument("--gif", metavar="FILE", help="write a GIF of the tiny run's overlay here")
    add_ranged(p, "--threads", "ONNX Runtime threads (default: all cores)", default=None)
    args = p.parse_args(argv)
    work = gate.check_folder(args.work, "--work")  # never inside an artefact folder
    rows = []
    cases = [("tiny", tiny_artifact(work / "tiny-dino"), 96, (320, 240))]
    if args.full:
        cases.append(("full", Path(args.full), 6, (320, 240)))
    for tag, art, n, size in cases:
        clip, pngs = make_clip(work, n, size, tag)
        row = {"model": tag, "size": f"{size[0]}x{size[1]}", **compare(art, clip, pngs, work / f"out-{tag}",
                                                                        args.threads)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    art = cases[0][1]
    memory = {}
    for n in (48, 192):
        clip, _ = make_clip(work, n, (320, 240), "mem")
        memory[n] = peak_rss_child(art, clip, work / f"out-mem-{n}", args.threads)
    report = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "command": "make bench-video", "rows": rows, "peak_rss_mib_by_frames": memory,
              "rss_ratio_4x_frames": memory[192] / memory[48]}

    write_json(args.json, report)
    print(json.dumps({"peak_rss_mib_by_frames": memory}), flush=True)
    if args.gif:
        gif(work / "out-tiny" / "video" / "tiny_overlay.mp4", Path(args.gif))
    return 0


if __name__ == "__main__":
    sys.exit(main())
