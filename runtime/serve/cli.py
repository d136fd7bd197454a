"""`fsa triton` (write a Triton model repository) and `fsa serve` (run Triton here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fsa_deploy.contract import ARTIFACT_BACKENDS, ONNXRUNTIME, TRITON_BACKENDS
from fsa_deploy.errors import FSAError
from fsa_deploy.ranges import add_ranged
from fsa_deploy.runtime.serve.check import check_repository
from fsa_deploy.runtime.serve.repository import RepoOptions, write_repository
from fsa_deploy.runtime.serve.server import Server, serve
from fsa_deploy.spellings import add_old_spellings


def add_triton(sub: argparse._SubParsersAction, text: str) -> None:
    p = sub.add_parser("triton", help=text, description=text)
    p.add_argument("artifact", metavar="DIR", help="artefact folder (fsa export)")
    p.add_argument("--out", required=True, metavar="REPO", help="model repository to write")
    p.add_argument("--image-backend", choices=TRITON_BACKENDS, default=ONNXRUNTIME.triton,
                   help="Triton backend of the image model: image.onnx, or the TensorRT engine in meta.json")
    p.add_argument("--precision", help="which TensorRT engine, when several were built")
    add_ranged(p, "--batch", "crops per image-model request, fsa_image's max_batch_size (capped by the engine; "
               "default 16)", default=16)
    add_ranged(p, "--instances", "fsa_segment instances (concurrent images; default 4)", default=4)
    p.add_argument("--cache-dir", metavar="DIR", default="",
                   help="class-embedding cache inside the server, shared by the instances (default: its temp dir)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a repository written by fsa triton (never an artefact folder or other files)")
    add_old_spellings(p, "triton")
    p.set_defaults(func=run_triton)


def run_triton(args: argparse.Namespace) -> int:
    opts = RepoOptions(target="container", image_backend=args.image_backend, batch=args.batch,
                       segment_instances=args.instances, precision=args.precision, cache_dir=args.cache_dir)
    out = write_repository(args.artifact, args.out, opts, overwrite=args.overwrite)  # needs the serve extra
    problems = check_repository(out)  # the files as written, parsed back from disk
    if problems:
        raise FSAError(f"{out}: " + "; ".join(problems))
    print(f"fsa triton: {out}: fsa_segment, fsa_image ({args.image_backend}), fsa_text; configs checked")
    return 0


def add_serve(sub: argparse._SubParsersAction, text: str) -> None:
    p = sub.add_parser("serve", help=text, description=text)
    p.add_argument("artifact", metavar="DIR", help="artefact folder (fsa export)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    add_ranged(p, "--http-port", "Triton's HTTP port (default 8000)", default=8000)
    add_ranged(p, "--grpc-port", "Triton's gRPC port (default 8001)", default=8001)
    add_ranged(p, "--metrics-port", "Triton's metrics port (default 8002)", default=8002)
    p.add_argument("--backend", choices=ARTIFACT_BACKENDS, default="auto", help="runtime backend inside the server")
    add_ranged(p, "--threads", "ONNX Runtime intra-op threads (0: its default)", default=0)
    add_ranged(p, "--batch", "crops per image-model request, fsa_image's max_batch_size (default 16)", default=16)
    add_ranged(p, "--instances", "fsa_segment instances (concurrent images; default 4)", default=4)
    p.add_argument("--cache-dir", metavar="DIR", help="class-embedding cache, shared by the instances and kept "
                                                      "across restarts (default $FSA_CACHE_DIR or ~/.cache/fsa-deploy)")
    p.add_argument("--log-file", type=Path, help="tritonserver's log (default: a temp file, gone at exit)")
    p.add_argument("--overwrite", action="store_true",
                   help="append to a --log-file that fsa did not write (tritonserver appends; without it such a "
                        "file is refused)")
    p.add_argument("--serve-venv", type=Path, help="the serving env (default $FSA_SERVE_VENV or <repo>/.venv-serve)")
    add_old_spellings(p, "serve")
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    if len(set(ports.values())) < len(ports):
        raise FSAError(f"{', '.join(f'{k} {v}' for k, v in ports.items())}: the three ports must differ")
    opts = RepoOptions(target="local", backend=args.backend, batch=args.batch,
                       segment_instances=args.instances, threads=args.threads, cache_dir=args.cache_dir or "")
    return serve(Server(Path(args.artifact), args.host, args.http_port, args.grpc_port, args.metrics_port,
                        opts, args.serve_venv, args.log_file, args.overwrite))
