"""`fsa validate`: prove an artefact equals the PyTorch reference, in numbers.

Both sides see the same crops of the same images and the same text embeddings (the
reference's text tower; text.onnx is checked on its own). Crop logits, final label maps,
the top-p ties and, with --stages, every stage tensor are compared; tolerance profiles are
data. Exit 0 pass, 1 fail (CheckFailed), 2 bad input (FSAError).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fsa_deploy.contract import (
    ARTIFACT_BACKENDS,
    BACKENDS,
    IMAGE_ONNX,
    IMAGE_ROLES,
    META,
    PROFILES,
    STAGES,
    TEXT_ONNX,
    TOKENIZER_VOCAB,
    Role,
)
from fsa_deploy.errors import CheckFailed, FSAError
from fsa_deploy.log import logger
from fsa_deploy.models.dump import numpy_encoder
from fsa_deploy.models.factory import build_reference, spec_from_meta
from fsa_deploy.models.reference import Alignment, aligned_stages
from fsa_deploy.ranges import Range, add_ranged
from fsa_deploy.runtime import artifact as A
from fsa_deploy.runtime import gate
from fsa_deploy.runtime.backends.base import Backend
from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend
from fsa_deploy.runtime.backends.trt import TensorRTBackend
from fsa_deploy.runtime.images import expand_images as expand
from fsa_deploy.runtime.images import load_image, sample_photos
from fsa_deploy.runtime.pipeline import Geometry, batches, class_probs, crops_of, labels_of, resize_image, stitch
from fsa_deploy.runtime.schema import MetaRecord
from fsa_deploy.runtime.text import (
    DEFAULT_CLASSES,
    Vocabulary,
    add_vocabulary_args,
    classifier,
    tokenize,
    vocabulary_from_args,
)
from fsa_deploy.spellings import add_old_spellings

if TYPE_CHECKING:  # the reference's types, for the signatures (the modules import where used)
    from fsa_deploy.models.factory import Reference
    from fsa_deploy.models.reference import FSAModel
    from fsa_deploy.runtime.text import Vocabulary

LOG = logger("validation")

# an in-memory model's external weights are read from this folder (onnxruntime >= 1.17)
ARGMAX_TIE = 1e-5  # reference top-2 class probabilities closer than this: either label is right


@dataclass(frozen=True)
class Tolerances:
    """Thresholds of one profile; None: reported, not checked."""

    logits_rel_l2_max: float | None = None
    logits_cosine_min: float | None = None
    pixel_agreement_min: float | None = None
    miou_min: float | None = None
    top_p_flips_max: int | None = None  # unambiguous keep-mask flips (top-p, step 12)
    proxy_mask_flips_max: int | None = None  # unambiguous proxy-attention mask flips (step 6)
    stage_rel_l2_max: float | None = None  # --stages: a stage above this "breaks"
    text_rel_l2_max: float | None = 1e-5  # text.onnx is fp32 in every profile


TOLERANCES: dict[str, Tolerances] = {  # PROFILES' thresholds
    # stages: KL (a difference of near-equal terms) and A_new (exp(lamda * Sim)) amplify fp32
    # rounding to ~3e-5 while the logits stay at ~3e-6, hence 1e-4 per stage
    "fp32": Tolerances(logits_rel_l2_max=1e-5, pixel_agreement_min=1.0, top_p_flips_max=0, proxy_mask_flips_max=0,
                       stage_rel_l2_max=1e-4),
    "fp16": Tolerances(pixel_agreement_min=0.999, stage_rel_l2_max=1e-2),
    "int8": Tolerances(pixel_agreement_min=0.99, miou_min=0.97, stage_rel_l2_max=1e-1),
    "fp8": Tolerances(pixel_agreement_min=0.99, miou_min=0.97, stage_rel_l2_max=1e-1),
}
assert tuple(TOLERANCES) == PROFILES


# each metric's range: a --tol outside it (or NaN / Infinity) is a usage error, never a silent pass
TOLERANCE_RANGES: dict[str, Range] = {
    "logits_rel_l2_max": Range(0.0, 1e6), "logits_cosine_min": Range(-1.0, 1.0),
    "pixel_agreement_min": Range(0.0, 1.0), "miou_min": Range(0.0, 1.0),
    "top_p_flips_max": Range(0, 2**62, integer=True), "proxy_mask_flips_max": Range(0, 2**62, integer=True),
    "stage_rel_l2_max": Range(0.0, 1e6), "text_rel_l2_max": Range(0.0, 1e6),
}
assert set(TOLERANCE_RANGES) == {f.name for f in fields(Tolerances)}


def tolerances_for(profile: str, overrides: dict[str, float]) -> Tolerances:
    if profile not in TOLERANCES:
        raise FSAError(f"--profile {profile!r}: unknown (choose from {', '.join(PROFILES)})")
    names = {f.name for f in fields(Tolerances)}
    bad = sorted(set(overrides) - names)
    if bad:
        raise FSAError(f"--tol {bad[0]}: unknown metric (choose from {', '.join(sorted(names))})")
    for name, value in overrides.items():
        TOLERANCE_RANGES[name].check(value, f"--tol {name}")
    checked: dict[str, Any] = dict(overrides)  # each within its TOLERANCE_RANGES entry (integral where an int)
    return replace(TOLERANCES[profile], **checked)


# --- metrics ------------------------------------------------------------------------------------


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-30))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-30))


def miou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean IoU of two label maps over the classes present in either."""
    ious = []
    for c in np.union1d(np.unique(a), np.unique(b)):
        inter = np.logical_and(a == c, b == c).sum()
        union = np.logical_or(a == c, b == c).sum()
        ious.append(inter / union)
    return float(np.mean(ious))


def argmax_ties(probs: np.ndarray) -> np.ndarray:
    """Pixels whose two best class probabilities are within ARGMAX_TIE."""
    if probs.shape[0] < 2:
        return np.zeros(probs.shape[1:], dtype=bool)
    top2 = np.partition(probs, -2, axis=0)[-2:]
    ties: np.ndarray = (top2[1] - top2[0]) <= ARGMAX_TIE
    return ties


def error_stats(ref: dict[str, np.ndarray], art: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Per tensor: Polygraphy's error statistics (max / mean / median abs diff) plus rel L2."""
    from polygraphy.comparator import IterationResult, SimpleCompareFunc  # noqa: PLC0415 - polygraphy: heavy, imported where it is used
    from polygraphy.logger import G_LOGGER  # noqa: PLC0415 - polygraphy: heavy, imported where it is used

    names = [n for n in ref if n in art]
    severity = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.CRITICAL
    try:
        compare = SimpleCompareFunc(atol=math.inf, rtol=math.inf, check_shapes=True)
        to_f = {n: np.ascontiguousarray(ref[n], np.float64) for n in names}
        from_f = {n: np.ascontiguousarray(art[n], np.float64) for n in names}
        results = compare(IterationResult(to_f, runner_name="reference"),
                          IterationResult(from_f, runner_name="artifact"))
    finally:
        G_LOGGER.module_severity = severity
    out = {}
    for n in names:
        r = results[n]
        out[n] = {"rel_l2": rel_l2(from_f[n], to_f[n]), "max_abs": float(r.max_absdiff),
                  "mean_abs": float(r.mean_absdiff), "median_abs": float(r.median_absdiff)}
    return out


# --- the two sides ------------------------------------------------------------------------------


class ArtifactSide:
    """The artefact on its runtime Backend; ONNX graphs also return `keep`/`attn_proxy` (and every
    stage with --stages) through OnnxRuntimeBackend.run_stages: one way to run a graph."""

    def __init__(self, art: A.Artifact, name: str, backend: str, stages: bool):
        self.name = name
        self.stage_names: list[str] = []
        info = art.file(name)
        if backend == "trt" or name.endswith(".engine"):
            if stages:
                raise FSAError("--stages: engines expose no stage tensors; validate the ONNX graph with --stages")
            self.backend: Backend = TensorRTBackend(art, info.precision)
            self.kind = "tensorrt"
            return

        stage_map = art.info.stages
        self.stage_names = list(stage_map) if stages else [n for n in ("keep", "attn_proxy") if n in stage_map]
        self.backend = OnnxRuntimeBackend(art, name, stages=self.stage_names)
        self.kind = self.backend.name

    @classmethod
    def on(cls, backend: Backend) -> ArtifactSide:
        """A side on a Backend with `run_stages` already open (the PyTorch backend of a bench row)."""
        side = cls.__new__(cls)
        side.name, side.backend, side.kind = backend.name, backend, backend.name
        side.stage_names = list(backend.stage_names)
        return side

    def run(self, crops: np.ndarray, text: np.ndarray) -> dict[str, np.ndarray]:
        if self.kind == "tensorrt":
            return {"logits": np.asarray(self.backend.run(crops, text), dtype=np.float32)}
        return self.backend.run_stages(crops, text)


def reference_side(meta: MetaRecord, fp64: bool) -> Reference:
    ref = build_reference(spec_from_meta(meta, meta.source), "deploy")
    if fp64:
        ref.model.set_precision(torch.float32, torch.float64)
    return ref


# --- one image ------------------------------------------------------------------------------------


def compare_crops(ref_model: FSAModel, side: ArtifactSide, crops: np.ndarray, text: np.ndarray, batch: int,
                  want_stages: bool) -> dict[str, Any]:
    """Both sides on the same crops (host arrays from the runtime pipeline; tensors for the
    reference), `batch` crops per call; masks that rounding decides are resolved the artefact's way."""
    ref_logits, art_logits, stage_pairs, total = [], [], [], Alignment()
    text_t = torch.from_numpy(np.ascontiguousarray(text))
    for sl in batches(len(crops), batch):
        chunk = np.ascontiguousarray(crops[sl])
        got = side.run(chunk, text)
        with torch.no_grad():
            ref, al = aligned_stages(ref_model, torch.from_numpy(chunk), text_t, got)
        for f in fields(Alignment):
            setattr(total, f.name, getattr(total, f.name) + getattr(al, f.name))
        ref_logits.append(ref["logits"].float().numpy())
        art_logits.append(got["logits"].astype(np.float32))
        if want_stages:
            stage_pairs.append(({n: ref[n].double().numpy() for n in side.stage_names if n in ref},
                                {n: got[n] for n in side.stage_names}))
    return {"ref": np.concatenate(ref_logits), "art": np.concatenate(art_logits), "alignment": total,
            "stages": stage_pairs}


def stage_report(pairs: list[tuple[dict[str, Any], dict[str, Any]]], order: list[str],
                 tol: float | None) -> tuple[dict[str, Any], str | None]:
    ref = {n: np.concatenate([p[0][n] for p in pairs]) for n in pairs[0][0]}
    art = {n: np.concatenate([p[1][n] for p in pairs]) for n in pairs[0][1]}
    stats = error_stats(ref, art)
    broken = [n for n in order if n in stats and tol is not None and stats[n]["rel_l2"] > tol]
    return {n: stats[n] for n in order if n in stats}, (broken[0] if broken else None)


def validate_image(path: str, ref: Reference, side: ArtifactSide, text: np.ndarray, query_class: list[int],
                   crop: int, prob_thd: float,
                   batch: int, stages: bool, stride: int | None, stage_tol: float | None) -> dict[str, Any]:
    """One image through both sides: `crop` and `prob_thd` the artefact's (MetaRecord), `batch` crops per call."""
    geo = Geometry(crop=crop, stride=stride)
    image = load_image(path)
    resized = resize_image(image, geo)
    crops, wins = crops_of(resized, geo)
    hp = ref.spec.hp
    r = compare_crops(ref.model, side, crops, text, batch, stages)
    al = r["alignment"]
    per_crop_rel = [rel_l2(a, b) for a, b in zip(r["art"], r["ref"])]
    per_crop_cos = [cosine(a, b) for a, b in zip(r["art"], r["ref"])]
    size, out = tuple(resized.shape[-2:]), tuple(image.shape[-2:])
    probs = {k: class_probs(stitch(r[k], wins, size, out, geo.crop), query_class, hp.logit_scale)
             for k in ("ref", "art")}
    thd = prob_thd
    labels = {k: labels_of(p, thd) for k, p in probs.items()}
    tied = argmax_ties(probs["ref"])
    agree = (labels["ref"] == labels["art"]) | tied
    report = {
        "image": str(path), "size": list(out), "crops": len(wins),
        "logits_rel_l2": max(per_crop_rel), "logits_cosine": min(per_crop_cos),
        "logits_max_abs": float(np.abs(r["art"] - r["ref"]).max()),
        "logits_mean_abs": float(np.abs(r["art"] - r["ref"]).mean()),
        "nonfinite_logits": int((~np.isfinite(r["art"])).sum() + (~np.isfinite(r["ref"])).sum()),
        "pixel_agreement": float(agree.mean()), "miou": miou(labels["art"], labels["ref"]),
        "top_p_tie_entries": al.top_p_ties, "top_p_flips": al.top_p_flips,
        "proxy_mask_ties": al.proxy_ties, "proxy_mask_flips": al.proxy_flips, "argmax_ties": int(tied.sum()),
    }
    if stages:
        report["stages"], report["first_failing_stage"] = stage_report(r["stages"], list(STAGES), stage_tol)
    return report


# --- the whole run --------------------------------------------------------------------------------


CHECKS = (  # (tolerance field, summary metric, "max" or "min" bound)
    ("logits_rel_l2_max", "logits_rel_l2_max", "max"),
    ("logits_cosine_min", "logits_cosine_min", "min"),
    ("pixel_agreement_min", "pixel_agreement_min", "min"),
    ("miou_min", "miou_min", "min"),
    ("top_p_flips_max", "top_p_flips", "max"),
    ("proxy_mask_flips_max", "proxy_mask_flips", "max"),
    ("text_rel_l2_max", "text_rel_l2", "max"),
)


def _worst(values: list[float], pick: Callable[[list[float]], float]) -> float:
    """max/min where one NaN makes the result NaN (Python's max and min skip it by position)."""
    return math.nan if any(math.isnan(v) for v in values) else pick(values)


def summarize(images: list[dict[str, Any]], text_err: float | None) -> dict[str, Any]:
    if not images:  # every image failed to load: nothing was compared
        return {"text_rel_l2": text_err}
    return {
        "logits_rel_l2_max": _worst([i["logits_rel_l2"] for i in images], max),
        "logits_cosine_min": _worst([i["logits_cosine"] for i in images], min),
        "logits_max_abs": _worst([i["logits_max_abs"] for i in images], max),
        "pixel_agreement_min": min(i["pixel_agreement"] for i in images),
        "miou_min": min(i["miou"] for i in images),
        "nonfinite_logits": sum(i.get("nonfinite_logits", 0) for i in images),
        "top_p_tie_entries": sum(i["top_p_tie_entries"] for i in images),
        "top_p_flips": sum(i["top_p_flips"] for i in images),
        "proxy_mask_ties": sum(i["proxy_mask_ties"] for i in images),
        "proxy_mask_flips": sum(i["proxy_mask_flips"] for i in images),
        "argmax_ties": sum(i["argmax_ties"] for i in images),
        "text_rel_l2": text_err,
    }


def failures_of(summary: dict[str, Any], tol: Tolerances) -> list[str]:
    # NaN or Infinity in any compared number is a failure, whether or not the profile checks it
    out = [f"{k} = {v} (not a finite number)" for k, v in summary.items()
           if isinstance(v, float) and not math.isfinite(v)]
    if summary.get("nonfinite_logits"):
        out.append(f"nonfinite_logits = {summary['nonfinite_logits']} (NaN or Infinity in the logits)")
    for field, metric, bound in CHECKS:
        limit, value = getattr(tol, field), summary.get(metric)
        if limit is None or value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        if (bound == "max" and value > limit) or (bound == "min" and value < limit):
            out.append(f"{metric} = {value:.6g} {'>' if bound == 'max' else '<'} {limit:g}")
    return out


def text_check(art: A.Artifact, ref: Reference, prompts: list[str]) -> float | None:
    """text.onnx against the reference text tower on (some of) the prompts in use."""
    if TEXT_ONNX not in art.files():
        return None

    vocab_file = art.path(TOKENIZER_VOCAB) if TOKENIZER_VOCAB in art.files() else None
    tokens = tokenize(prompts[:16], vocab_file)
    got = OnnxRuntimeBackend(art).encode_text(tokens)
    with torch.no_grad():
        want = ref.encode_text(torch.from_numpy(tokens)).float().numpy()
    return rel_l2(got, want)


@dataclass
class ValidationReport:
    """What `fsa validate` found: the fields, in this order, are the keys of its --json report."""

    passed: bool
    tolerance_profile: str
    tolerances: dict[str, float | None]
    artifact: str
    backend: str
    reference: str
    classes: list[str]
    summary: dict[str, Any]  # the worst value of each metric over the images (and the text check)
    failures: list[str]
    images: list[dict[str, Any]]  # one record per checked image
    errors: list[dict[str, str]]  # images that could not be checked

    def to_json(self) -> dict[str, Any]:
        """The --json object: today's keys, in today's order (nested records shared, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def run_validation(folder: str, artifact: str | None = None, backend: str = "auto", images: list[str] | None = None,
                   vocab: Vocabulary | None = None, profile: str | None = None,
                   overrides: dict[str, float] | None = None,
                   stages: bool = False, fp64: bool = False, batch: int = 8, stride: int | None = None,
                   progress: bool = False) -> ValidationReport:
    art = A.Artifact.load(folder)
    art.verify_all()  # refuse a folder whose files do not match meta.json
    name = artifact or IMAGE_ONNX
    if name not in art.files():
        raise FSAError(f"--graph {name}: not in {folder}/{META} (files: {', '.join(art.files())})")
    role = art.file(name).role
    if role not in (None, *IMAGE_ROLES, Role.ENGINE):
        raise FSAError(f"--graph {name}: its role is {role!r}, not an image graph or engine (validate compares "
                       f"image graphs: e.g. {IMAGE_ONNX})")
    profile = profile or str(art.file(name).precision or art.info.precision)
    tol = tolerances_for(profile, overrides or {})
    images = images or sample_photos()
    vocab = vocab or Vocabulary.from_file(DEFAULT_CLASSES)
    side = ArtifactSide(art, name, backend, stages)
    ref = reference_side(art.info, fp64)
    templates = art.info.templates  # runtime.schema checked it: a list of prompt templates

    with torch.no_grad():
        text = classifier(numpy_encoder(ref), vocab.queries, templates)
    reports, errors = [], []
    for i, path in enumerate(images):
        if progress:
            LOG.info(f"[{i + 1}/{len(images)}] {path}")
        try:
            reports.append(validate_image(path, ref, side, text, vocab.query_class, art.info.crop, art.info.prob_thd,
                                          batch, stages, stride, tol.stage_rel_l2_max))
        except FSAError as e:  # like `fsa segment`: report the bad image, check the others
            msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
            errors.append({"image": str(path), "error": msg})
            LOG.error(f"fsa validate: error: {msg}")
    prompts = [t.format(q) for q in vocab.queries for t in templates]
    summary = summarize(reports, text_check(art, ref, prompts))
    failures = failures_of(summary, tol) + [f"image not checked: {e['error']}" for e in errors]
    report = ValidationReport(
        passed=not failures, tolerance_profile=profile, tolerances=asdict(tol),
        artifact=str(Path(folder) / name), backend=side.kind,
        reference="pytorch-cpu-" + ("fp64-head" if fp64 else "fp32"), classes=vocab.names,
        summary=summary, failures=failures, images=reports, errors=errors)
    if stages:
        order = {n: i for i, n in enumerate(STAGES)}
        first = [r["first_failing_stage"] for r in reports if r.get("first_failing_stage")]
        report.summary["first_failing_stage"] = min(first, key=order.__getitem__) if first else None
    return report


# --- reports --------------------------------------------------------------------------------------

COLUMNS = (("image", "image"), ("crops", "crops"), ("rel L2", "logits_rel_l2"), ("cosine", "logits_cosine"),
           ("max abs", "logits_max_abs"), ("agreement", "pixel_agreement"), ("mIoU", "miou"),
           ("top-p ties", "top_p_tie_entries"), ("top-p flips", "top_p_flips"), ("argmax ties", "argmax_ties"))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6f}" if 1e-3 <= abs(v) <= 1 or v == 0 else f"{v:.3e}"
    return Path(v).name if isinstance(v, str) else str(v)


def table_rows(report: ValidationReport) -> list[list[str]]:
    return [[_fmt(img[key]) for _, key in COLUMNS] for img in report.images]


def format_terminal(report: ValidationReport) -> str:
    head = [c for c, _ in COLUMNS]
    rows = table_rows(report)
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))
    out = [f"artifact {report.artifact} on {report.backend} vs {report.reference}, "
           f"profile {report.tolerance_profile}", line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    s = report.summary
    out.append("summary: " + ", ".join(f"{k} {_fmt(v)}" for k, v in s.items() if v is not None))
    for r in report.images:
        if "stages" in r:
            out.append(f"stages of {Path(r['image']).name} (first failing: {r['first_failing_stage']}):")
            out += [f"  {n:16s} rel L2 {v['rel_l2']:.3e}  max abs {v['max_abs']:.3e}" for n, v in r["stages"].items()]
    out += [f"not checked: {e['error']}" for e in report.errors]
    verdict = "PASSED" if report.passed else "FAILED: " + "; ".join(report.failures)
    out.append(verdict)
    return "\n".join(out)


def format_markdown(report: ValidationReport) -> str:
    head = [c for c, _ in COLUMNS]
    out = [f"# fsa validate: {'PASSED' if report.passed else 'FAILED'}", "",
           f"- artifact: `{report.artifact}` on {report.backend}",
           f"- reference: {report.reference}", f"- tolerance profile: {report.tolerance_profile}",
           "- tolerances: " + ", ".join(f"{k} {v}" for k, v in report.tolerances.items() if v is not None), "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in table_rows(report)]
    out += ["", "## Summary", "", "| metric | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in report.summary.items()]
    for r in report.images:
        if "stages" in r:
            out += ["", f"## Stages of {Path(r['image']).name} (first failing: {r['first_failing_stage']})", "",
                    "| stage | rel L2 | max abs | mean abs |", "|---|---|---|---|"]
            out += [f"| {n} | {v['rel_l2']:.3e} | {v['max_abs']:.3e} | {v['mean_abs']:.3e} |"
                    for n, v in r["stages"].items()]
    if report.failures:
        out += ["", "## Failures", ""] + [f"- {f}" for f in report.failures]
    if report.errors:
        out += ["", "## Images not checked", ""] + [f"- {e['error']}" for e in report.errors]
    return "\n".join(out) + "\n"


# --- CLI ------------------------------------------------------------------------------------------


def parse_tolerances(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise FSAError(f"--tol {item!r}: expected NAME=NUMBER") from None
        if not sep:
            raise FSAError(f"--tol {item!r}: expected NAME=NUMBER")
    for name, number in out.items():  # before any work: an unknown name or a value out of range is exit 2
        if name not in TOLERANCE_RANGES:
            raise FSAError(f"--tol {name}: unknown metric (choose from {', '.join(sorted(TOLERANCE_RANGES))})")
        TOLERANCE_RANGES[name].check(number, f"--tol {name}")
    return out


def strict_json(obj: Any) -> Any:
    """The report with NaN and Infinity as null: strict JSON (the failures list names them)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def expand_images(items: list[str] | None) -> list[str] | None:
    """--images: runtime.images.expand_images; the first error line is the error."""
    if not items:
        return None

    files, errors = expand(items, "--images")
    if errors:
        raise FSAError(errors[0])
    return [str(f) for f in files]


def add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser], help_text: str) -> None:
    p = sub.add_parser("validate", help=help_text, description=(
        "Run the PyTorch reference and the artefact on the same crops of the same images and compare crop "
        "logits, label maps and (with --stages) every stage. Exit 0 pass, 1 fail, 2 bad input."))
    p.add_argument("folder", metavar="DIR", help="artefact folder (fsa export)")
    p.add_argument("--graph", metavar="FILE",
                   help="graph or engine file of the folder to check (default image.onnx; e.g. image.int8.onnx)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="trt: the folder's engine of the graph's precision; onnx: ONNX Runtime; auto (default): "
                        "TensorRT for an .engine file, ONNX Runtime otherwise; torch does not apply (the "
                        "reference is PyTorch)")
    p.add_argument("--images", nargs="+", help="images or folders (default: scikit-image's sample photos)")
    p.add_argument("--profile", help="fp32, fp16, int8 or fp8 (default: the artefact's precision)")
    p.add_argument("--tol", action="append", default=[], metavar="NAME=VALUE",
                   help="override one tolerance, e.g. --tol pixel_agreement_min=0.995")
    p.add_argument("--stages", action="store_true", help="compare every stage; name the first that breaks")
    p.add_argument("--fp64", action="store_true", help="run the reference's last block and feedback in float64")
    add_ranged(p, "--batch", "crops per call (default 8)", default=8)
    add_ranged(p, "--stride", "sliding-window stride (default crop // 3)", default=None)
    p.add_argument("--json", help="write the report as JSON")
    p.add_argument("--md", help="write the report as Markdown")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --md files")
    add_vocabulary_args(p)
    add_old_spellings(p, "validate")
    p.set_defaults(func=run_validate)


def backend_of(name: str) -> str:
    """segment's backend names; the ones that do not apply to a comparison with the reference are refused."""
    if name not in ARTIFACT_BACKENDS:
        raise FSAError(f"--backend {name}: validate compares an artefact with the PyTorch reference; "
                       f"choose from {', '.join(ARTIFACT_BACKENDS)}")
    return name


def run_validate(args: argparse.Namespace) -> int:
    outputs = gate.Outputs()  # before any work; --json and --md the same file is refused
    for path, option in ((args.json, "--json"), (args.md, "--md")):
        outputs.file(path, option, args.overwrite)
    report = run_validation(args.folder, args.graph, backend_of(args.backend), expand_images(args.images),
                            vocabulary_from_args(args), args.profile, parse_tolerances(args.tol), args.stages,
                            args.fp64, args.batch, args.stride, progress=True)

    for path, text in ((args.json, lambda: json.dumps(strict_json(report.to_json()), indent=2, allow_nan=False)),
                       (args.md, lambda: format_markdown(report))):
        if path:
            try:
                gate.write_text(path, text())
            except OSError as e:
                raise FSAError(f"{path}: cannot write the report ({e.strerror or e})") from e
    print(format_terminal(report))
    if report.errors:
        raise FSAError(f"{len(report.errors)} of {len(report.errors) + len(report.images)} images "
                       "could not be checked (the report lists them)")
    if not report.passed:
        raise CheckFailed("; ".join(report.failures) + (
            f" (first failing stage: {report.summary.get('first_failing_stage')})" if args.stages else ""))
    return 0
