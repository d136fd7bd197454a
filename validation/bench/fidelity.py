"""A row's fidelity: `fsa validate`'s per-image check on the bench images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fsa_deploy import contract
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.artifact import Artifact
from fsa_deploy.runtime.backends.onnxrt import CPU_EP, OnnxRuntimeBackend
from fsa_deploy.validation.bench.data import TRT, BenchPlan, BenchRow, Fidelity

if TYPE_CHECKING:
    from fsa_deploy.models.backend import TorchBackend


def row_fidelity(row: BenchRow, plan: BenchPlan, text: Any, backend: TorchBackend | None) -> Fidelity:
    """validate_image on every bench image against validate's reference (PyTorch deploy, fp32, CPU)."""
    from fsa_deploy.models.factory import Reference, build_reference
    from fsa_deploy.validation import validate as V

    if backend is not None:  # a PyTorch row: its own model
        side = V.ArtifactSide.on(backend)
        cpu32 = row.device == "cpu" and row.precision == "fp32"  # the row's weights are the reference's
        ref = (Reference(plan.spec, backend.ref.model.with_formulation("deploy"), backend.ref.clip) if cpu32
               else build_reference(plan.spec, "deploy"))
    else:
        side = V.ArtifactSide(Artifact.load(str(row.folder)), str(row.file), "trt" if row.format == TRT else "onnx",
                              False)
        ref = build_reference(plan.spec, "deploy")
    profile = row.precision if row.precision in contract.PROFILES else "fp32"
    reports = [V.validate_image(p, ref, side, text, plan.vocab.query_class, plan.spec.crop, 0.0, plan.batch, False,
                                None, None)
               for p in plan.images]
    s = V.summarize(reports, None)
    failures = V.failures_of(s, V.tolerances_for(profile, {}))
    return Fidelity(profile, not failures, s["pixel_agreement_min"], s["miou_min"], s["logits_rel_l2_max"],
                    failures, side.kind)


def ort_fp16_note(row: BenchRow) -> str | None:
    """Whether ONNX Runtime's CPU provider runs the fp16 graph natively: it inserts Casts to
    fp32 around nodes it has no fp16 kernel for; count them in its optimized graph."""
    import onnx

    with gate.temp_dir() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        backend = OnnxRuntimeBackend(str(row.folder), str(row.file), providers=[CPU_EP], optimized_to=optimized)
        path = backend.artifact.path(str(row.file))
        casts = lambda m: sum(n.op_type == "Cast" for n in m.graph.node)
        added = casts(onnx.load(str(optimized), load_external_data=False)) - casts(
            onnx.load(str(path), load_external_data=False))
    if added <= 0:
        return None
    return f"ORT CPU has no fp16 kernel for part of the graph: it inserted {added} Casts and runs that part in fp32"


