"""`make bench-serve`: `fsa serve` (Triton, ORT CPU inside) against the in-process Segmenter, same
artefact, images, classes and run. Images/s and p50/p99 latency at 1, 4 and 16 concurrent clients
(gRPC, one client each), failures, the serving overhead at concurrency 1, and the RSS of tritonserver
and its descendants (server + python stubs, read with psutil) before and after 1,000 requests.

python -m benchmarks.serving_overhead [--artifact DIR] [--requests 1000] [--json F] [--md F]
Without --artifact, the tests' tiny random-init model (crop 112) is exported to out/bench/serve-art once.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.ports import free_ports
from fsa_deploy.cli import OneLineParser
from fsa_deploy.contract import IN_CLASSES, IN_IMAGE, OUT_LABELS, SEGMENT_MODEL
from fsa_deploy.export.tiny import tiny_artifact
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.images import sample_photos
from fsa_deploy.runtime.segmenter import Segmenter
from fsa_deploy.runtime.serve.repository import RepoOptions
from fsa_deploy.runtime.serve.server import Server
from fsa_deploy.runtime.text import DEFAULT_CLASSES

CONCURRENCY = (1, 4, 16)


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (tritonserver and its python-backend
    stubs), MiB; psutil reads it on Linux, Windows and macOS alike. A process gone is 0."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):  # ended between the listing and the read
            continue
    return total / 2**20


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def run_level(call, concurrency: int, requests: int, images: list) -> dict:
    """`requests` calls spread over `concurrency` threads; each thread its own state (client)."""
    lat: list[float] = []
    fails = [0]
    lock = threading.Lock()

    def worker(i: int) -> None:
        state = call("open")
        try:
            for j in range(i, requests, concurrency):
                t0 = time.perf_counter()
                try:
                    call(state, images[j % len(images)])
                    dt = (time.perf_counter() - t0) * 1e3
                    with lock:
                        lat.append(dt)
                except Exception:  # noqa: BLE001 - counted, the table says how many
                    with lock:
                        fails[0] += 1
        finally:
            call("close", state)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": requests, "failed": fails[0], "images_per_s": len(lat) / wall,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "latencies_ms": lat, "wall_s": wall}


def merged(parts: list[dict]) -> dict:
    """Rounds of one level as one row (latencies pooled; images/s over the summed wall time)."""
    lat = [x for r in parts for x in r["latencies_ms"]]
    wall = sum(r["wall_s"] for r in parts)
    return {"concurrency": parts[0]["concurrency"], "requests": sum(r["requests"] for r in parts),
            "failed": sum(r["failed"] for r in parts), "images_per_s": len(lat) / wall if wall else 0.0,
            "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99)}


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__)
    p.add_argument("--artifact", type=Path)
    add_ranged(p, "--requests", "requests between the two RSS readings (default 1000)", default=1000)
    add_ranged(p, "--per-level", "requests per concurrency level (default 32)", default=32)
    add_ranged(p, "--warmup", default=100,
               help_text="requests at 4 clients before any timing (default 100): every fsa_segment instance meets "
                         "every photo, so the RSS reading before the soak is past the allocators' first high-water "
                         "marks")
    p.add_argument("--json", type=Path)
    p.add_argument("--md", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import tritonclient.grpc as tg

    art = args.artifact or tiny_artifact(Path("out/bench/serve-art"))
    classes = ",".join(line for line in DEFAULT_CLASSES.read_text().splitlines() if line.strip())
    paths = sample_photos()
    blobs = [Path(x).read_bytes() for x in paths]
    seg = Segmenter.from_artifact(art, "onnx", cache_dir=None).set_classes(classes)

    def local(state, image=None):
        if state == "open" or state == "close":
            return None
        # what fsa_segment returns: the label map and the summary JSON (fsa segment's NAME.json)
        return json.dumps(seg.segment(image).summary(), indent=2)

    http, grpc, metrics = free_ports(3)
    server = Server(Path(art), http_port=http, grpc_port=grpc, metrics_port=metrics,
                    options=RepoOptions(target="local", backend="onnx"))

    def remote(state, image=None):
        if state == "open":
            return tg.InferenceServerClient(f"127.0.0.1:{grpc}")
        if state == "close":
            return image.close()
        ins = []
        for name, value in ((IN_IMAGE, image), (IN_CLASSES, classes.encode())):
            t = tg.InferInput(name, [1], "BYTES")
            t.set_data_from_numpy(np.array([value], dtype=np.object_))
            ins.append(t)
        return state.infer(SEGMENT_MODEL, ins).as_numpy(OUT_LABELS)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` stops the server
    t0 = time.perf_counter()
    server.start()
    ready_s = time.perf_counter() - t0
    rows = []
    try:
        run_level(remote, 4, args.warmup, blobs)  # class embeddings, sessions, every instance and image size
        for x in paths:
            seg.segment(x)
        # The two sides alternate in rounds (4 at one client, where the overhead is read), so that a
        # change in the machine's load (2 shared cores) falls on both rather than on one.
        for c in CONCURRENCY:
            rounds = 4 if c == 1 else 1
            sides: dict[str, tuple[Callable[..., Any], list[Any]]] = {"in-process": (local, paths),
                                                                    "fsa serve": (remote, blobs)}
            parts: dict[str, list[dict]] = {where: [] for where in sides}
            for _ in range(rounds):
                for where, (call, images) in sides.items():
                    parts[where].append(run_level(call, c, args.per_level, images))
            for where in sides:
                rows.append({"where": where, **merged(parts[where])})
                print(f"bench-serve: {rows[-1]}", file=sys.stderr, flush=True)
        assert server.proc is not None
        rss_before = tree_rss_mb(server.proc.pid)
        print(f"bench-serve: soak, {args.requests} requests, RSS {rss_before:.0f} MB", file=sys.stderr, flush=True)
        # the soak in five parts, RSS read after each: growth that goes on, or a plateau
        chunks, rss_curve = [], [rss_before]
        for k in range(5):
            n = args.requests // 5 + (1 if k < args.requests % 5 else 0)
            chunks.append(run_level(remote, 4, n, blobs))
            rss_curve.append(tree_rss_mb(server.proc.pid))
        rss_after = rss_curve[-1]
        soak = merged(chunks)
    finally:
        rc = server.stop()
    base = next(r for r in rows if r["where"] == "in-process" and r["concurrency"] == 1)
    served = next(r for r in rows if r["where"] == "fsa serve" and r["concurrency"] == 1)
    result = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "artifact": str(art), "classes": len(classes.split(",")), "images": [Path(x).name for x in paths],
        "ready_s": round(ready_s, 2), "rows": rows,
        "overhead_c1": served["p50_ms"] / base["p50_ms"] - 1,
        "soak": {**soak, "rss_before_mb": rss_before, "rss_after_mb": rss_after,
                 "rss_growth": rss_after / rss_before - 1, "rss_curve_mb": [round(x, 1) for x in rss_curve]},
        "failed_total": sum(r["failed"] for r in rows if r["where"] == "fsa serve") + soak["failed"],
        "tritonserver_rc": rc,
    }
    md = ["| where | clients | requests | failed | images/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['where']} | {r['concurrency']} | {r['requests']} | {r['failed']} | {r['images_per_s']:.2f} | "
           f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} |" for r in rows]
    md += ["", f"Serving overhead at 1 client (p50): {100 * result['overhead_c1']:+.1f}%. "
           f"Soak: {soak['requests']} requests at 4 clients, {soak['failed']} failed, {soak['images_per_s']:.2f} "
           f"images/s; server group RSS {rss_before:.0f} MB -> {rss_after:.0f} MB "
           f"({100 * result['soak']['rss_growth']:+.1f}%; every {args.requests // 5} requests: "
           f"{', '.join(f'{x:.0f}' for x in rss_curve)} MB). Ready in {ready_s:.1f} s."]
    text = "\n".join(md)
    print(text)

    for path, body in ((args.json, json.dumps(result, indent=2)), (args.md, text)):
        if path:
            gate.mkdir(path.parent)
            gate.write_text(path, body + "\n")
    return 0 if result["failed_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
