"""The evaluation protocol of each method on each benchmark, transcribed from the official configs.

The method comes from the artefact (meta.json's attention type and whether FSA is on). A preset
is data: method defaults (the segmentor's __init__ arguments) updated by the per-dataset config,
each entry naming its source file. What our pipeline cannot express (PAMR, area_thd, whole-image
inference, another window size than the artefact's crop) is run as close as it can and listed in
`differs_from_official` with the reason. Every field can be overridden from the command line.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from dataclasses import asdict as _asdict
from importlib import resources
from pathlib import Path
from typing import Any

from fsa_deploy.contract import IMAGE_ONNX, RESIZE_MMCV, TEXT_ONNX
from fsa_deploy.errors import FSAError
from fsa_deploy.models.registry import HyperParams, default_lamda
from fsa_deploy.runtime.schema import MetaRecord
from fsa_deploy.runtime.text import Vocabulary
from fsa_deploy.validation.eval.datasets import IGNORE_INDEX, LAYOUTS

RESIZE_LONG = 2048  # every config: Resize(scale=(2048, short), keep_ratio=True)


@dataclass(frozen=True)
class Preset:
    """A method's official settings for one dataset. `crop` 0: whole-image inference."""

    short_side: int = 336
    crop: int = 336
    stride: int = 112
    prob_thd: float = 0.0
    logit_scale: float = 40.0
    area_thd: float | None = None
    pamr_steps: int = 0
    source: str = ""


@dataclass(frozen=True)
class Method:
    """Defaults of a method's segmentor, the class files it ships, their synonym separator."""

    defaults: Preset
    class_dir: str  # package data folder of its cls_*.txt files
    separator: str  # as its get_cls_idx splits a line
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)


# Class-file stems of the official repositories, per dataset.
CLASS_FILES = {"voc21": "cls_voc21", "voc20": "cls_voc20", "context60": "cls_context60",
               "context59": "cls_context59", "coco-object": "cls_coco_object", "coco-stuff": "cls_coco_stuff",
               "cityscapes": "cls_city_scapes", "ade20k": "cls_ade20k"}
CONFIG_FILES = {"voc21": "cfg_voc21.py", "voc20": "cfg_voc20.py", "context60": "cfg_context60.py",
                "context59": "cfg_context59.py", "coco-object": "cfg_coco_object.py",
                "coco-stuff": "cfg_coco_stuff164k.py", "cityscapes": "cfg_city_scapes.py", "ade20k": "cfg_ade20k.py"}

FSA_SRC = "chi-chi-zx/FSA@dbd2da5"
PROXYCLIP_SRC = "mc-lan/ProxyCLIP@e7b767f"
SCLIP_SRC = "wangf3014/SCLIP@b56bd30"
CLEARCLIP_SRC = "mc-lan/ClearCLIP@ad68a40"
NACLIP_SRC = "sinahmr/NACLIP@0cac3a6"

METHODS: dict[str, Method] = {
    # FSA_Proxy_segmentor.py __init__: prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=336
    "fsa": Method(Preset(source=f"{FSA_SRC} FSA_Proxy_segmentor.py"), "fsa", ";", {
        "voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.14}, "coco-object": {"prob_thd": 0.30},
        "cityscapes": {"short_side": 448, "crop": 224, "stride": 80}, "ade20k": {"short_side": 448}}),
    # proxyclip_segmentor.py __init__: the same defaults as FSA's
    "proxyclip": Method(Preset(source=f"{PROXYCLIP_SRC} proxyclip_segmentor.py"), "fsa", ";", {
        "voc21": {"prob_thd": 0.2}, "context60": {"prob_thd": 0.15}, "coco-object": {"prob_thd": 0.25},
        "cityscapes": {"short_side": 448, "crop": 224, "stride": 112}, "ade20k": {"short_side": 448}}),
    # clip_segmentor.py __init__: pamr_steps=0, prob_thd=0.0, logit_scale=40, slide_stride=112,
    # slide_crop=224, area_thd=None; class lines split on ', '
    "sclip": Method(Preset(crop=224, source=f"{SCLIP_SRC} clip_segmentor.py"), "sclip", ", ", {
        "voc21": {"logit_scale": 65, "prob_thd": 0.1, "area_thd": 0.1},
        "context60": {"logit_scale": 50, "prob_thd": 0.1}, "coco-object": {"logit_scale": 50, "prob_thd": 0.1},
        "coco-stuff": {"short_side": 448}, "cityscapes": {"short_side": 560}}),
    # clearclip_segmentor.py __init__: prob_thd=0.0, logit_scale=50, slide_stride=224, slide_crop=448;
    # class lines split on ','
    "clearclip": Method(Preset(short_side=448, crop=448, stride=224, logit_scale=50,
                               source=f"{CLEARCLIP_SRC} clearclip_segmentor.py"), "clearclip", ",", {
        "voc21": {"prob_thd": 0.5}, "context60": {"prob_thd": 0.15}, "coco-object": {"prob_thd": 0.4},
        "cityscapes": {"crop": 224}}),
    # naclip.py __init__: pamr_steps=10, prob_thd=0.0, logit_scale=40, slide_stride=112, slide_crop=224;
    # class lines split on ', ' (the same files as SCLIP's)
    "naclip": Method(Preset(crop=224, pamr_steps=10, source=f"{NACLIP_SRC} naclip.py"), "sclip", ", ", {
        "voc21": {"prob_thd": 0.1, "crop": 0}, "voc20": {"crop": 0}, "context60": {"prob_thd": 0.1},
        "coco-object": {"prob_thd": 0.1}, "cityscapes": {"short_side": 560}}),
}
METHOD_SOURCES = {"fsa": FSA_SRC, "proxyclip": PROXYCLIP_SRC, "sclip": SCLIP_SRC, "clearclip": CLEARCLIP_SRC,
                  "naclip": NACLIP_SRC}
# attention type of the artefact -> the method whose configs apply (proxy: FSA on or off)
ATTENTION_METHOD = {"sclip": "sclip", "clearclip": "clearclip", "naclip": "naclip", "qk": "proxyclip"}


def method_of(meta: MetaRecord) -> tuple[str, str, list[str]]:
    """(method name, the preset used, reasons it is not that method's own config) from meta.json."""
    attention, fsa = str(meta.attention), bool(meta.recorded.fsa)
    if attention == "proxy":
        return ("fsa", "fsa", []) if fsa else ("proxyclip", "proxyclip", [])
    if attention not in ATTENTION_METHOD:
        raise FSAError(f"meta.json attention {attention!r}: no evaluation protocol for it")
    base = ATTENTION_METHOD[attention]
    notes = []
    if attention == "qk":
        notes.append("plain q-k attention has no official configuration; ProxyCLIP's protocol is used")
    name = f"fsa+{attention}" if fsa else attention
    if fsa:
        notes.append(f"FSA on {attention} attention: the FSA repository configures proxy attention only; "
                     f"{base}'s protocol is used")
    return name, base, notes


@dataclass
class Protocol:
    """What `fsa eval` runs; `asdict` is the JSON's `protocol` (plus provenance)."""

    short_side: int
    long_side: int
    crop: int
    stride: int
    prob_thd: float
    reduce_zero_label: bool
    ignore_index: int
    logit_scale: float
    class_file: str
    resize: str  # "mmcv": cv2 on uint8 as the official pipeline; "float": fsa segment's float32 resize
    differs_from_official: list[str]
    sources: list[str]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def official(method: str, dataset: str) -> Preset:
    m = METHODS[method]
    cfg = f"{METHOD_SOURCES[method]} configs/{CONFIG_FILES[dataset]}" if dataset in CONFIG_FILES else ""
    return replace(m.defaults, **m.datasets.get(dataset, {}), source=f"{m.defaults.source}; {cfg}".strip("; "))


def class_file_of(method: str, dataset: str) -> Path:
    """The official class-name file the method's config names for the dataset (shipped in the package)."""
    stem = CLASS_FILES[dataset]
    return Path(str(resources.files("fsa_deploy.validation.eval") / "data" / METHODS[method].class_dir / f"{stem}.txt"))


def read_classes(path: str | os.PathLike[str], separator: str, what: str) -> Vocabulary:
    """A class file through `fsa segment`'s reader (runtime/text.py: BOM, FIFO, control characters,
    '|', repeated classes, empty lines), synonyms split as the file's own repository splits them."""
    return Vocabulary.from_file(path, separator, what)


@functools.cache
def _dataset_names() -> dict[str, list[str]]:
    path = resources.files("fsa_deploy.validation.eval") / "data" / "class_names.json"
    return json.loads(path.read_text(encoding="utf-8"))


def class_names(dataset: str, vocab: Vocabulary) -> list[str]:
    """The dataset's own class names (its mmsegmentation dataset class's METAINFO, data/SOURCES.md),
    for the per-class rows; a folder dataset's are its class file's first names."""
    return list(_dataset_names().get(dataset) or vocab.names)


@dataclass(frozen=True)
class Overrides:
    short_side: int | None = None
    long_side: int | None = None
    stride: int | None = None
    prob_thd: float | None = None
    classes_file: str | None = None
    resize: str = RESIZE_MMCV


def resolve(meta: MetaRecord, dataset: str, over: Overrides) -> tuple[str, Protocol, Vocabulary]:
    """(method name, the protocol, the classes) for an artefact on a dataset (its Artifact.info)."""
    name, base, notes = method_of(meta)
    lay = LAYOUTS[dataset]
    art_crop = meta.crop
    differs = list(notes)
    if dataset == "folder":
        pre = replace(METHODS[base].defaults, source=METHODS[base].defaults.source)
        differs.append("folder: users' data, no official configuration; the method's defaults are used")
    else:
        pre = official(base, dataset)
    if pre.pamr_steps:
        differs.append(f"PAMR ({pre.pamr_steps} steps) refines the official logits; not run here")
    if pre.area_thd is not None:
        differs.append(f"area_thd {pre.area_thd}: the official post-processing drops small classes; not run here")
    stride = pre.stride
    if pre.crop == 0:
        differs.append(f"the official config infers on the whole image (slide_crop=0); windows of {art_crop} "
                       f"with stride {min(stride, art_crop)} are used")
    elif pre.crop != art_crop:
        differs.append(f"the official config slides windows of {pre.crop} (stride {pre.stride}); the artefact's "
                       f"graphs take {art_crop}: windows of {art_crop} with stride {min(stride, art_crop)}")
    stride = min(stride, art_crop)
    recorded_scale = meta.recorded.logit_scale
    art_scale = pre.logit_scale if recorded_scale is None else recorded_scale
    if abs(art_scale - pre.logit_scale) > 1e-9:
        differs.append(f"logit scale {pre.logit_scale:g} (official) used, the artefact records {art_scale:g}")
    if over.classes_file:
        vocab = read_classes(over.classes_file, ";", "--classes-file")
        class_file = str(over.classes_file)
        if dataset != "folder":
            differs.append(f"--classes-file {over.classes_file} instead of the official {CLASS_FILES[dataset]}.txt")
    elif dataset == "folder":
        raise FSAError("dataset folder: give --classes-file (one class a line, in label order; synonyms with ';')")
    else:
        path = class_file_of(base, dataset)
        vocab = read_classes(path, METHODS[base].separator, "class file")
        class_file = f"{METHOD_SOURCES[base]} configs/{CLASS_FILES[dataset]}.txt"
    k = lay.num_classes or len(vocab.classes)
    if len(vocab.classes) != k:
        raise FSAError(f"--classes-file {over.classes_file}: {len(vocab.classes)} classes, {dataset} has {k}")
    proto = Protocol(short_side=pre.short_side, long_side=RESIZE_LONG, crop=art_crop, stride=stride,
                     prob_thd=pre.prob_thd, reduce_zero_label=lay.reduce_zero_label, ignore_index=IGNORE_INDEX,
                     logit_scale=pre.logit_scale, class_file=class_file, resize=over.resize,
                     differs_from_official=differs,
                     sources=[s for s in (pre.source, lay.source) if s])
    for key in ("short_side", "long_side", "stride", "prob_thd"):
        value = getattr(over, key)
        if value is not None and value != getattr(proto, key):
            differs.append(f"--{key.replace('_', '-')} {value} instead of {getattr(proto, key)}")
            setattr(proto, key, value)
    if over.resize != RESIZE_MMCV:
        differs.append(f"--resize {over.resize}: the image is decoded by Pillow and resized in float32 (as `fsa "
                       "segment` does); the official pipeline decodes with OpenCV and resizes the uint8 image with "
                       "cv2 (mmcv.imrescale), which changes a few pixels per image")
    if proto.stride > art_crop:
        raise FSAError(f"--stride {proto.stride}: above the artefact's crop {art_crop}")
    return name, proto, vocab


# The official code's precision (FSA_Proxy_segmentor.py / proxyclip_segmentor.py: open_clip's
# create_model(..., precision='fp16'), self.vfm.half(), imgs_norm.half()); SCLIP, ClearCLIP and
# NACLIP build CLIP in fp16 as well (open_clip's create_model(precision='fp16') / clip.load on CUDA).
OFFICIAL_PRECISION = "fp16"
# The paper's backbones (FSA README, hyper_param.txt) and the proxy its configs load (base_config.py
# vfm_model='dino': torch.hub dino_vitb8, this project's proxy "dino").
PAPER_MODELS = ("ViT-B-16", "ViT-L-14", "ViT-H-14")
OFFICIAL_PROXY = "dino"


def published_hyper_parameters(meta: MetaRecord) -> dict[str, float]:
    """The method's published hyper-parameters for the artefact's backbone and proxy (FSA's
    defaults and hyper_param.txt's lambda, models/registry.py)."""

    hp = _asdict(HyperParams())
    with contextlib.suppress(FSAError):  # a backbone or proxy this version does not know: the defaults
        hp["lamda"] = default_lamda(str(meta.model), meta.proxy)
    return hp


def _source(w: Any) -> str | None:
    if not isinstance(w, dict):
        return None
    src = str(w.get("source"))
    detail = w.get("tag") or (f"seed {w['seed']}" if "seed" in w else None) or str(w.get("sha256", ""))[:12]
    return f"{src} ({detail})" if detail else src


def declared(art: Any, rows: list[Any], reference: bool) -> tuple[dict[str, Any], list[str]]:
    """(the JSON's `setup`: backbone, proxy, weights, precision per row, hyper-parameters, crop,
    hashes; the differences from the official setup, each one line)."""
    meta, got = art.info, art.info.recorded
    files = art.file_records()
    hp = dict(got.hyper_parameters or {})
    precision = {}
    for r in rows:
        if r.is_reference:
            precision[r.name] = r.precision or "fp32"
        elif r.graph:
            precision[r.name] = str((files[r.graph].precision if r.graph in files else None) or meta.precision)
        else:
            precision[r.name] = meta.precision
    setup = {"model": got.model, "proxy": got.proxy, "weights": _source(got.weights),
             "proxy_weights": _source(got.proxy_weights), "crop": got.crop,
             "precision": precision, "official_precision": OFFICIAL_PRECISION, "hyper_parameters": hp,
             "artifact_sha256": art.sha256(IMAGE_ONNX), "text_sha256": art.sha256(TEXT_ONNX)}
    notes = []
    off = [f"{name} {p}" for name, p in precision.items() if p != OFFICIAL_PRECISION]
    if off:
        notes.append(f"precision: the official code runs CLIP and the proxy in {OFFICIAL_PRECISION}; here "
                     + ", ".join(off))
    published = published_hyper_parameters(meta)
    for key, value in hp.items():
        if key in published and abs(value - published[key]) > 1e-9 * max(1.0, abs(published[key])):
            notes.append(f"hyper-parameter {key} {value:g}, the method's published value is {published[key]:g}")
    if got.model not in PAPER_MODELS:
        notes.append(f"backbone {got.model}: not one of the paper's ({', '.join(PAPER_MODELS)})")
    if got.attention == "proxy" and got.proxy != OFFICIAL_PROXY:
        notes.append(f"proxy {got.proxy}: the official configs load {OFFICIAL_PROXY} (dino_vitb8)")
    for what, w in (("weights", got.weights), ("proxy weights", got.proxy_weights)):
        if isinstance(w, dict) and w.get("source") not in ("pretrained", "checkpoint"):
            notes.append(f"{what} {_source(w)}: not published weights")
    return setup, notes
