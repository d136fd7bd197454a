"""`fsa doctor`: what this machine can run, in one screen (or one JSON object).

Each probe is a small function returning plain data, and none may fail the verb:
a probe that raises is reported with its reason. open_clip, timm and ModelOpt are
only looked up (find_spec, package metadata), never imported: importing them is
slow and, on an edge box, beside the point.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import sys
from collections.abc import Callable
from typing import Any

from fsa_deploy.contract import RTX_TARGETS
from fsa_deploy.errors import FSAError
from fsa_deploy.runtime.backends.trt_lib import FLAVOUR_OF, RTX, TRT, Flavour, require_tensorrt, target_of


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package(module: str, *dists: str) -> dict[str, Any]:
    """Installed or not, and its version, without importing it."""
    found = importlib.util.find_spec(module) is not None
    return {"installed": found, "version": _dist_version(*dists) if found else None}


def probe_torch() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"version": torch.__version__, "cuda_build": torch.version.cuda}
    info["cuda_available"] = torch.cuda.is_available()
    info["gpus"] = [
        {
            "name": torch.cuda.get_device_name(i),
            "compute_capability": "{}.{}".format(*torch.cuda.get_device_capability(i)),
            "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1),
        }
        for i in range(torch.cuda.device_count() if info["cuda_available"] else 0)
    ]
    return info


def probe_tensorrt(flavour: Flavour = TRT) -> dict[str, Any]:
    """One TensorRT flavour: importable or why not, and which GPUs its engines serve."""
    try:
        return {"available": True, "version": require_tensorrt(flavour), "serves": flavour.serves}
    except FSAError as e:
        return {"available": False, "version": None, "reason": str(e), "serves": flavour.serves}


def rtx_runs_here(gpus: list[dict[str, Any]]) -> bool:
    """TensorRT-RTX engines run on the first GPU when its compute capability is one of its targets."""
    return bool(gpus) and target_of(gpus[0]["compute_capability"]) in RTX_TARGETS


def probe_onnxruntime() -> dict[str, Any]:
    import onnxruntime

    return {"version": onnxruntime.__version__, "providers": onnxruntime.get_available_providers()}


def safely(probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """A probe's result, or why it could not run (doctor always finishes)."""
    try:
        return probe()
    except Exception as e:  # noqa: BLE001 - reporting, not handling: whatever failed is the answer
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}


def capabilities(report: dict[str, Any]) -> dict[str, bool]:
    """Which verbs / backends the probes say can run here."""
    gpu = bool(report["torch"].get("cuda_available"))
    trt = bool(report["tensorrt"].get("available"))
    rtx = bool(report["tensorrt_rtx"].get("available"))
    providers = report["onnxruntime"].get("providers") or []
    torch_ok = "version" in report["torch"]
    return {
        "export": torch_ok and report["open_clip"]["installed"] and report["timm"]["installed"],
        "build": trt and gpu,
        "build-rtx": rtx,  # TensorRT-RTX compiles ahead of time without a GPU
        "calibrate": report["modelopt"]["installed"] and bool(providers),
        "onnxruntime-cpu": "CPUExecutionProvider" in providers,
        "onnxruntime-cuda": "CUDAExecutionProvider" in providers and gpu,
        "onnxruntime-tensorrt": "TensorrtExecutionProvider" in providers and gpu,
        "tensorrt": trt and gpu,
        "tensorrt-rtx": rtx and gpu and rtx_runs_here(report["torch"].get("gpus") or []),
        "pytorch-cuda": gpu,
    }


def collect() -> dict[str, Any]:
    report: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": safely(probe_torch),
        "tensorrt": safely(probe_tensorrt),
        "tensorrt_rtx": safely(lambda: probe_tensorrt(RTX)),
        "onnxruntime": safely(probe_onnxruntime),
        "modelopt": package("modelopt", "nvidia-modelopt", "nvidia_modelopt"),
        "open_clip": package("open_clip", "open_clip_torch", "open-clip-torch"),
        "timm": package("timm", "timm"),
    }
    report["can_run"] = capabilities(report)
    return report


def _line(key: str, value: Any) -> str:
    return f"{key:<14}{value}"


def format_text(r: dict[str, Any]) -> str:
    t, ort = r["torch"], r["onnxruntime"]
    lines = [_line("python", f"{r['python']} ({r['platform']})")]
    lines.append(_line("torch", t.get("error") or f"{t['version']} (CUDA build {t['cuda_build'] or 'none'})"))
    gpus = t.get("gpus") or []
    cuda = "; ".join(f"{g['name']} SM {g['compute_capability']} {g['memory_gib']} GiB" for g in gpus)
    lines.append(_line("cuda", cuda or "no CUDA GPU available"))
    for key in (f.module for f in FLAVOUR_OF.values()):
        lib = r[key]
        lines.append(_line(key, lib.get("version") or lib.get("reason") or lib.get("error")))
    ort_text = ort.get("error") or f"{ort['version']} ({', '.join(ort['providers'])})"
    lines.append(_line("onnxruntime", ort_text))
    for key in ("modelopt", "open_clip", "timm"):
        p = r[key]
        lines.append(_line(key, (p["version"] or "installed") if p["installed"] else "not installed"))
    yes = [k for k, v in r["can_run"].items() if v]
    no = [k for k, v in r["can_run"].items() if not v]
    lines.append(_line("can run", ", ".join(yes) or "nothing"))
    lines.append(_line("cannot run", ", ".join(no) or "-"))
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    report = collect()
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    sys.stdout.flush()
    return 0


def add_doctor(subparsers: Any, help_text: str) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help=help_text,
        description="Report Python, torch, CUDA GPU, TensorRT, TensorRT-RTX, ONNX Runtime, ModelOpt.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object on stdout instead of text")
    p.set_defaults(func=run_doctor)
    return p
