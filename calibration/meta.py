"""What a calibration records in meta.json."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fsa_deploy import contract
from fsa_deploy.calibration.data import CalibrationData
from fsa_deploy.calibration.graph import QdqSummary
from fsa_deploy.calibration.modelopt_call import modelopt_version
from fsa_deploy.calibration.rules import EXCLUDED_OP_TYPES
from fsa_deploy.contract import Role
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime.schema import CalibrationRun, FileRecord

if TYPE_CHECKING:
    from fsa_deploy.calibration.quantize import CalibrationOptions


def record(art: A.Artifact, name: str, opts: CalibrationOptions, data: CalibrationData, summary: QdqSummary,
           fp32_nodes: dict[str, int], seconds: float, has_data: bool) -> None:
    if has_data:
        art.record(name + "_data", FileRecord(role=Role.EXTERNAL_DATA))
    run = CalibrationRun(method=opts.method, region=opts.region, count=int(len(data.crops)), batch=opts.batch,
                         op_types=tuple(opts.op_types) or "modelopt", images=data.images, classes=int(len(data.text)),
                         cache=data.cache, seconds=round(seconds, 1))
    art.record(name, FileRecord(
        role=Role.IMAGE_QDQ, precision=opts.precision, source=contract.IMAGE_ONNX,
        source_sha256=art.file(contract.IMAGE_ONNX).sha256, calibration=run,
        qdq_pairs=summary.pairs, quantized_ops=dict(summary.quantized_ops),
        fp32_nodes={"scope": art.info.feedback_scope or None, **fp32_nodes, "op_types": list(EXCLUDED_OP_TYPES)},
        modelopt=modelopt_version()))
    art.save()


