"""Segment images with FSA artefacts: backends (TensorRT, ONNX Runtime, PyTorch), the
segmentation pipeline, the validator and benchmarks.

Importing `runtime` (or `runtime.segmenter`, `runtime.backends`) pulls neither
open_clip's model code nor timm: backends import their engines lazily, and only the
PyTorch backend needs `models`' heavy modules.
"""
