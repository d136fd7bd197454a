"""A backend on one named graph or engine of an artefact folder (`--graph FILE`).

`fsa segment --graph`, `fsa eval --graph` and `fsa validate --graph` run a given file rather than
the one `auto` picks: an `.engine` (or `--backend trt` on a graph) on TensorRT with the engine of
that precision, an ONNX graph on ONNX Runtime.
"""

from __future__ import annotations

from fsa_deploy.contract import IMAGE_ONNX, IMAGE_ROLES, META
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from fsa_deploy.runtime.backends.select import select_backend
from fsa_deploy.runtime.backends.trt import TensorRTBackend


def open_graph(art: Artifact, graph: str | None, backend: str = "auto", *, threads: int | None = None,
               precision: str | None = None) -> tuple[Backend, str, str]:
    """(backend, the file it runs, why): `graph` None is `select_backend`'s choice."""
    if graph is None:
        opened = select_backend(art, backend, threads=threads, precision=precision)
        b = opened.backend
        return b, b.graph_file or IMAGE_ONNX, opened.reason
    if "/" in graph or "\\" in graph:
        raise FSAError(f"--graph {graph}: give a file name of the artefact folder, not a path")
    if graph not in art.files():
        raise FSAError(f"--graph {graph}: not in {art.root}/{META} (files: {', '.join(art.files())})")
    info = art.file(graph)
    if backend == "torch":
        raise FSAError(f"--graph {graph} with --backend torch: the PyTorch reference runs no graph file")
    if graph.endswith(".engine") or backend == "trt":
        return TensorRTBackend(art, info.precision), graph, "--graph"
    if info.role not in (None, *IMAGE_ROLES):
        raise FSAError(f"--graph {graph}: a {info.role} file, not an image graph")

    return OnnxRuntimeBackend(art, graph, threads=threads), graph, "--graph"
