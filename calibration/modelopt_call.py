"""The call into NVIDIA ModelOpt (modelopt.onnx.quantization.quantize), on the CPU."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING

from fsa_deploy import contract, interrupts
from fsa_deploy.calibration.rules import EXCLUDED_OP_TYPES
from fsa_deploy.contract import Role
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.backends.trt_lib import hide_stub_tensorrt

if TYPE_CHECKING:
    from fsa_deploy.calibration.data import CalibrationData
    from fsa_deploy.calibration.quantize import CalibrationOptions


METHODS = {"entropy": "entropy", "max": "max"}  # --method -> ModelOpt's calibration_method


CALIBRATION_EPS = ["cpu"]  # ORT execution providers for calibration (no GPU needed)


MODELOPT_HINT = "NVIDIA ModelOpt is not installed: pip install 'fsa-deploy[quant]' (see docs/PRECISION.md)"


# ---------------------------------------------------------------- ModelOpt


def require_modelopt() -> Callable[..., None]:
    """modelopt.onnx.quantization.quantize, or one line naming the install command."""
    hide_stub_tensorrt()
    try:
        with interrupts.native():  # its import loads nanobind modules (lief): a signal there must not abort
            from modelopt.onnx.quantization import quantize
    except ImportError as e:
        raise FSAError(MODELOPT_HINT) from e
    return quantize


def modelopt_version() -> str:
    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return "absent"


def link_source(art: A.Artifact, work: Path) -> tuple[Path, bool]:
    """image.onnx (and its external data) linked into the work folder: ModelOpt writes its
    intermediate files beside the input and output, never into the artefact folder."""
    names = [contract.IMAGE_ONNX] + [n for n, i in art.file_records().items()
                                     if i.role == Role.EXTERNAL_DATA and n.startswith(contract.IMAGE_ONNX)]
    for n in names:
        src = art.path(n).resolve()
        gate.link_or_copy(src, work / n, symbolic=True)
    return work / contract.IMAGE_ONNX, len(names) > 1


def run_modelopt(quantize: Callable[..., None], src: Path, out: Path, data: CalibrationData, opts: CalibrationOptions,
                 exclude: list[str], external: bool, scope: str, progress: bool = True) -> None:
    from fsa_deploy.calibration.reader import DataReader

    patterns = ([f"^{re.escape(scope)}"] if scope else []) + [re.escape(n) + "$" for n in exclude]
    try:
        # ORT's calibrator prints and tqdm draws bars: on stderr with progress, nowhere with --quiet;
        # stdout is for the result either way
        with io.StringIO() as null, contextlib.redirect_stdout(sys.stderr if progress else null), \
                contextlib.redirect_stderr(sys.stderr if progress else null):
            quantize(str(src), quantize_mode=opts.precision, calibration_data_reader=DataReader(data, opts.batch),
                     calibration_method=METHODS[opts.method], calibration_eps=list(CALIBRATION_EPS),
                     output_path=str(out), high_precision_dtype="fp32", nodes_to_exclude=patterns,
                     op_types_to_exclude=list(EXCLUDED_OP_TYPES) if opts.fp32_rules else [],
                     use_external_data_format=external,
                     op_types_to_quantize=list(opts.op_types) or None,
                     log_level="WARNING")
    except Exception as e:  # ModelOpt/ORT raise many types (asserts included); one line, cause chained
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise FSAError(f"ModelOpt {opts.precision} quantization of {src.name} failed on the CPU "
                       f"({type(e).__name__}: {msg})") from e
    if not out.is_file():
        raise FSAError(f"ModelOpt {opts.precision} quantization of {src.name} wrote no model")




