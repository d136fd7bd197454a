"""`fsa calibrate`: explicit quantization (Q/DQ ONNX for TensorRT) from calibration images.

Import-light on purpose: ModelOpt, onnxruntime and torch are imported by
`calibration.quantize` when a calibration runs, so `fsa --help` costs nothing.
"""
