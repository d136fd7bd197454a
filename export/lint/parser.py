"""`fsa lint --parser`: the real ONNX parser (and, for TensorRT-RTX, the builder) on a graph.

Lint is the fast static check that runs anywhere; this is the ground truth where a TensorRT
library is installed. TensorRT-RTX builds without a GPU, so its verdict includes the builder's
(some graphs parse but do not build: TopK with K > 3840, ONNX Attention without a kernel);
TensorRT 10/11 builds only on a GPU, so without one its verdict is the parser's alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from fsa_deploy.export.trt_build import network_flags
from fsa_deploy.runtime.backends.trt_lib import RTX, TRT, Flavour, gpu_present, installed, load, logger

# dynamic dims get this min / opt / max in the verdict's build (small: a verdict, not an engine to keep)
DYNAMIC = (1, 2, 4)


@dataclass
class ParserVerdict:
    library: str
    version: str
    parses: bool
    builds: bool | None  # None: not attempted (TensorRT 10/11 without a GPU)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.parses and self.builds is not False


def available() -> Flavour | None:
    """TensorRT-RTX when installed (it can build here), else TensorRT 10/11, else None."""
    return next((f for f in (RTX, TRT) if installed(f) is not None), None)


def _parser_error(e: Any) -> str:
    try:
        text = f"[{e.node_operator() or 'node ' + str(e.node())}] {e.code().name}: {e.desc()}"
    except (AttributeError, TypeError):
        text = str(e)
    return " ".join(text.split())


def parser_verdict(model_or_path: onnx.ModelProto | str | Path, flavour: Flavour | None = None,
                   build: bool = True) -> ParserVerdict:
    """Parse (and build, where the flavour can build here) one graph; errors as one line each."""
    flavour = flavour or available() or RTX
    lib = load(flavour)
    log = logger(flavour)
    since = len(log.lines)
    t0 = time.perf_counter()
    builder = lib.Builder(log)
    network = builder.create_network(network_flags(lib, flavour))
    parser = lib.OnnxParser(network, log)
    if isinstance(model_or_path, onnx.ModelProto):
        ok = parser.parse(model_or_path.SerializeToString())
    else:
        ok = parser.parse_from_file(str(model_or_path))
    verdict = ParserVerdict(flavour.module, lib.__version__, bool(ok), None)
    if not ok:
        verdict.errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
    elif build and (not flavour.needs_gpu_to_build or gpu_present()):
        config = builder.create_builder_config()
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            t = network.get_input(i)
            shape = [t.shape[j] for j in range(len(t.shape))]
            if -1 in shape and not t.is_shape_tensor:
                profile.set_shape(t.name, *([v if d == -1 else d for d in shape] for v in DYNAMIC))
        config.add_optimization_profile(profile)
        verdict.builds = builder.build_serialized_network(network, config) is not None
        verdict.errors = [" ".join(m.split()) for m in log.errors(since)] if not verdict.builds else []
    verdict.seconds = time.perf_counter() - t0
    return verdict
