"""What can run on this machine, and the rows of the table (plan before anything slow runs)."""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

from fsa_deploy.calibration.modelopt_call import MODELOPT_HINT
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.backends.onnxrt import require_onnxruntime
from fsa_deploy.runtime.backends.select import tensorrt_unusable
from fsa_deploy.validation.bench.data import (
    BENCH_PRECISIONS,
    DEPLOY,
    LITERAL,
    MISSING,
    ORT,
    TRT,
    BenchOptions,
    BenchRow,
    Source,
)

# ---------------------------------------------------------------- this machine


@dataclass(frozen=True)
class Machine:
    """What can run here; a `*_missing` field is the reason a family of rows cannot."""

    cuda: bool
    ort_providers: tuple[str, ...]
    ort_missing: str | None
    trt_missing: str | None
    modelopt_missing: str | None

    @classmethod
    def probe(cls) -> Machine:
        import torch

        try:
            providers, ort_missing = tuple(require_onnxruntime().get_available_providers()), None
        except FSAError as e:
            providers, ort_missing = (), str(e)
        modelopt = None if importlib.util.find_spec("modelopt") else MODELOPT_HINT
        return cls(torch.cuda.is_available(), providers, ort_missing, tensorrt_unusable(), modelopt)

    def ort_unusable(self, device: str) -> str | None:
        if self.ort_missing or device == "cpu":
            return self.ort_missing
        if "CUDAExecutionProvider" not in self.ort_providers:
            return "onnxruntime has no CUDAExecutionProvider: pip install onnxruntime-gpu"
        return None


# ---------------------------------------------------------------- the rows of this machine


def plan_rows(opts: BenchOptions, machine: Machine, graphs: dict[str, Source],
              engines: dict[str, Source]) -> list[BenchRow]:
    """Every format and precision, in table order; families that cannot run here get one row saying why."""
    rows: list[BenchRow] = []
    for device in opts.devices:
        rows += [BenchRow.of(LITERAL, "fp32", device), BenchRow.of(DEPLOY, "fp32", device)]
        if device == "cuda":
            rows += [BenchRow.of(LITERAL, "fp16", device), BenchRow.of(DEPLOY, "fp16", device)]
        why = machine.ort_unusable(device)
        if why:
            rows.append(BenchRow.of(ORT, "/".join(BENCH_PRECISIONS), device, Source(status=MISSING, why=why)))
        else:
            rows += [BenchRow.of(ORT, p, device, src) for p, src in graphs.items()]
    if "cuda" in opts.devices or not machine.cuda:
        if machine.trt_missing:
            rows.append(BenchRow.of(TRT, "/".join(BENCH_PRECISIONS), "cuda", Source(status=MISSING,
                                                                               why=machine.trt_missing)))
        else:
            rows += [BenchRow.of(TRT, p, "cuda", src) for p, src in engines.items()]
    if not machine.cuda:
        rows.append(BenchRow.of("PyTorch, ONNX Runtime", "fp32/fp16", "cuda",
                           Source(status=MISSING, why="no CUDA device (torch.cuda.is_available() is False)")))
    if opts.only:
        rows = [r for r in rows if any(o.lower() in r.name.lower() for o in opts.only)]
    return rows


def needed_precisions(opts: BenchOptions, machine: Machine) -> tuple[set[str], set[str]]:
    """Precisions of the ONNX Runtime and TensorRT rows that --only keeps, so that nothing else
    is exported, calibrated or built; no row at all is a usage error."""
    probe = {p: Source() for p in BENCH_PRECISIONS}
    rows = plan_rows(opts, machine, probe, probe)
    if not rows:
        every = plan_rows(dataclasses.replace(opts, only=()), machine, probe, probe)
        raise FSAError(f"--only {' '.join(opts.only)}: matches no row (rows: {', '.join(r.name for r in every)})")
    need = {fmt: {r.precision for r in rows if r.runs and r.format == fmt} for fmt in (ORT, TRT)}
    return need[ORT] | need[TRT], need[TRT]


