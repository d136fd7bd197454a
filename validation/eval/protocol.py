"""The evaluation protocol of each method on each benchmark, transcribed from the official configs.

The method comes from the artefact (meta.json's attention type and whether FSA is on). A preset
is data: method defaults (the segmentor's __init__ arguments) updated by the per-dataset config,
each entry naming its source file. What our pipeline cannot express (PAMR, area_thd, whole-image
inference, another window size than the artefact's crop) is run as close as it can and listed in
`differs_from_official` with the reason. Every field can be overridden from the command line.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from fsa_deploy.runtime.text import Vocabulary
from fsa_deploy.validation.eval.datasets import IGNORE_INDEX, LAYOUTS

from fsa_deploy.errors import FSAError

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


def method_of(meta: dict[str, Any]) -> tuple[str, str, list[str]]:
    """(method name, the preset used, reasons it is not that method's own config) from meta.json."""
    attention, fsa = str(meta.get("attention")), bool(meta.get("fsa"))
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
    """One class a line, synonyms split on `separator` as the file's own repository splits them;
    names stripped. An empty line in the middle would shift every later class index: refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FSAError(f"{what} {path}: unreadable ({type(e).__name__})") from e
    while lines and not lines[-1].strip():
        lines.pop()
    classes = []
    for i, line in enumerate(lines, 1):
        names = tuple(n.strip() for n in line.split(separator.strip() or separator) if n.strip())
        if not names:
            raise FSAError(f"{what} {path}: line {i} is empty (every line is one class, in label order)")
        classes.append(names)
    if not classes:
        raise FSAError(f"{what} {path}: no class names")
    return Vocabulary(tuple(classes))


@dataclass(frozen=True)
class Overrides:
    short_side: int | None = None
    long_side: int | None = None
    stride: int | None = None
    prob_thd: float | None = None
    classes_file: str | None = None


def resolve(meta: dict[str, Any], dataset: str, over: Overrides) -> tuple[str, Protocol, Vocabulary]:
    """(method name, the protocol, the classes) for an artefact on a dataset."""
    name, base, notes = method_of(meta)
    lay = LAYOUTS[dataset]
    art_crop = int(meta["crop"])
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
    art_scale = float(meta.get("logit_scale", pre.logit_scale))
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
                     logit_scale=pre.logit_scale, class_file=class_file, differs_from_official=differs,
                     sources=[s for s in (pre.source, lay.source) if s])
    for key in ("short_side", "long_side", "stride", "prob_thd"):
        value = getattr(over, key)
        if value is not None and value != getattr(proto, key):
            differs.append(f"--{key.replace('_', '-')} {value} instead of {getattr(proto, key)}")
            setattr(proto, key, value)
    if proto.stride > art_crop:
        raise FSAError(f"--stride {proto.stride}: above the artefact's crop {art_crop}")
    return name, proto, vocab
