"""The names every part of fsa-deploy agrees on, in one place.

The exporter writes them, the runtime, the validator and the server read them; docs/CONTRACT.md
is their user-facing description. Nothing here imports anything heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- the artefact folder
FORMAT = "fsa-deploy-artifact"
FORMAT_VERSION = 1
META = "meta.json"
IMAGE_ONNX = "image.onnx"
# ---- what fsa wrote: the manifest in every folder it writes outputs to (file name -> sha256), so a re-run
# replaces its own files and refuses a user's (runtime/gate.py)
OUTPUTS_MANIFEST = ".fsa-outputs.jsonl"
OUTPUTS_FORMAT = "fsa-deploy-outputs"
TEXT_ONNX = "text.onnx"

# ---- tensor names of the graphs (inputs and outputs)
IMAGE = "image"  # float32 [B, 3, S, S], RGB 0-255, the crop resized and padded
TEXT_EMBEDDINGS = "text_embeddings"  # float32 [K, D], rows L2-normalised
LOGITS = "logits"  # float32 [B, K, H', W'], crop logits before upsampling
TOKENS = "tokens"  # int32 [T, L], L <= 77 (the longest prompt of the batch; [T, 77] as ever)
EMBEDDINGS = "embeddings"  # float32 [T, D], one per prompt, before template averaging
CONTEXT_LENGTH = 77  # CLIP's token context: the longest `tokens` row (text.onnx also takes shorter rows)

# ---- stable names inside image.onnx
STAGE_PREFIX = "stage."  # stage tensors are `stage.<name>`
FEEDBACK_SCOPE = "feedback/"  # nodes of the feedback steps 8-13 are `feedback/<Op>_<i>`
# masks built on purpose (masked_fill with +-inf before a softmax or a min): the only tensors of the fp32 graph that
# may hold a non-finite value (+-inf, never NaN) on calibration data; named `mask.<i>` by the exporter
MASK_PREFIX = "mask."
# docs/CONTRACT.md's stage keys, in forward order
STAGES = ("image", "proxy_features", "values", "text_embeddings", "attn_proxy", "attn_out1", "patch_logits",
          "uniform_logits", "feedback_probs", "kl", "sim", "keep", "attn_new", "features", "logits")

# ---- precisions: what each verb accepts
EXPORT_PRECISIONS = ("fp32", "fp16")  # `fsa export --precision`: the precision is in the ONNX
CALIBRATE_PRECISIONS = ("int8", "fp8")  # `fsa calibrate --precision`: Q/DQ graphs
GRAPH_PRECISIONS = EXPORT_PRECISIONS + CALIBRATE_PRECISIONS  # image graphs an artefact can hold
# meta.json's `model`: the CLIP models fsa-deploy builds (models/registry.CLIPS holds their specs)
CLIP_MODELS = ("ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "tiny")


class Role:
    """meta.json files records' `role`: what a file of the artefact is (docs/CONTRACT.md's files table).
    Plain strings (not an Enum): they compare equal to the roles read back from JSON and print as written."""

    IMAGE = "image"
    TEXT = "text"
    TOKENIZER = "tokenizer"
    EXTERNAL_DATA = "external-data"  # an ONNX graph's weights stored beside it (graphs over 2 GB)
    IMAGE_QDQ = "image-qdq"  # a calibrated int8 / fp8 image graph
    CALIBRATION_CACHE = "calibration-cache"
    ENGINE = "engine"
    TIMING_CACHE = "timing-cache"


IMAGE_ROLES = (Role.IMAGE, Role.IMAGE_QDQ)  # the image graphs an engine or a backend can be made from
FIXED_ROLES = {IMAGE_ONNX: Role.IMAGE, TEXT_ONNX: Role.TEXT}  # the role the two fixed graph names must carry
IMAGE_GRAPHS = {"fp32": IMAGE_ONNX, "fp16": IMAGE_ONNX, "int8": "image.int8.onnx", "fp8": "image.fp8.onnx"}
# `fsa validate --profile`: one tolerance profile per image-graph precision (the thresholds: validate.TOLERANCES)
PROFILES = GRAPH_PRECISIONS

# ---- backends: one spelling each, and the names other tools give them


@dataclass(frozen=True)
class BackendNames:
    """One backend's names: `--backend` (cli); the name reports print (report; a suffix may say the
    device, `onnxruntime-cpu`, `pytorch-cuda`, or the flavour, `tensorrt-rtx`); Triton's backend
    (`fsa triton --image-backend`, config.pbtxt `backend`) and platform for fsa_image, "" where
    Triton has none."""

    cli: str
    report: str
    triton: str = ""
    triton_platform: str = ""


ONNXRUNTIME = BackendNames("onnx", "onnxruntime", triton="onnxruntime")
TENSORRT = BackendNames("trt", "tensorrt", triton="tensorrt", triton_platform="tensorrt_plan")
PYTORCH = BackendNames("torch", "pytorch")
BACKEND_NAMES = {b.cli: b for b in (ONNXRUNTIME, TENSORRT, PYTORCH)}
ARTIFACT_BACKENDS = ("auto", TENSORRT.cli, ONNXRUNTIME.cli)  # the artefact's own graphs and engines: validate, serve
BACKENDS = (*ARTIFACT_BACKENDS, PYTORCH.cli)  # fsa segment, app, eval: torch is the PyTorch reference (an entry point)
TRITON_BACKENDS = tuple(b.triton for b in BACKEND_NAMES.values() if b.triton)  # `fsa triton --image-backend`
# what runs a model repository's models: Triton's container (fsa triton: fsa_image on Triton's own backend)
# or this machine's python models (fsa serve, PyTriton)
REPOSITORY_TARGETS = ("container", "local")

# ---- TensorRT: the two flavours (`fsa build --engine`, an engine record's "flavour") and TensorRT-RTX's
# compute-capability targets (`fsa build --targets`, an engine record's "targets"), oldest first
FLAVOURS = ("trt", "rtx")
RTX_TARGETS = ("sm75", "sm80", "sm86", "sm89", "sm120", "sm121")

# ---- the crop's input colour: CLIP's normalisation (windows are padded with its mean colour)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# ---- TensorRT's ONNX parser: TopK's K must be <= 3840 (measured with TensorRT-RTX's parser)
TOPK_MAX_K = 3840

# ---- the tokenizer: CLIP's BPE merges, copied from open_clip into the artefact at export (role "tokenizer")
TOKENIZER_VOCAB = "bpe_simple_vocab_16e6.txt.gz"

# ---- serving (Triton): the models and tensors outside checks call exactly so
SEGMENT_MODEL, IMAGE_MODEL, TEXT_MODEL = "fsa_segment", "fsa_image", "fsa_text"
IN_IMAGE, IN_CLASSES, OUT_LABELS, OUT_SUMMARY = "IMAGE", "CLASSES", "LABELS", "SUMMARY"
# optional fsa_segment inputs (the evaluation protocol); absent means the artefact's defaults
IN_SHORT_SIDE, IN_STRIDE, IN_PROB_THD = "SHORT_SIDE", "STRIDE", "PROB_THD"  # INT32, INT32, FP32

# ---- label maps: pixels under the probability threshold (fsa segment, serve, app; mmseg's ignore index).
# Above 255 classes the label map is 16-bit and the unlabelled value is UNLABELLED_WIDE.
UNLABELLED = 255
UNLABELLED_WIDE = 65535
UNLABELLED_NAME = "unlabelled"

# ---- fsa eval: its resize (`--resize`), its benchmarks in the paper's column order (`fsa eval paper`)
RESIZE_MMCV, RESIZE_FLOAT = "mmcv", "float"  # mmcv: cv2 on uint8, the official pipeline; float: fsa segment's
EVAL_RESIZES = (RESIZE_MMCV, RESIZE_FLOAT)
PAPER_BENCHMARKS = ("voc21", "context60", "coco-object", "voc20", "context59", "coco-stuff", "cityscapes", "ade20k")
PAPER = "paper"  # `fsa eval paper --root DATA`

# ---- video sources of `fsa segment` (the `video` extra, PyAV) and what it writes per source NAME
VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt")
CAMERA_PREFIX = "/dev/video"  # a V4L2 device; a bare index (0, 1, ...) names the platform's camera N
VIDEO_OVERLAY = "{}_overlay.mp4"  # H.264, the source's rate and size, the legend drawn in the frame
VIDEO_LABELS = "{}.labels.npz"  # one array, VIDEO_LABELS_KEY: [frames, H, W] class indices
VIDEO_LABELS_KEY = "labels"
VIDEO_SUMMARY = "{}.json"  # the run's summary with `frames`: one entry per frame
VIDEO_FRAME_PNG = "{:06d}.png"  # --frames: NAME/000000.png, ... (frame index in the output)
