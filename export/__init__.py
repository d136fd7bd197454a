"""Static graphs (ONNX), their lint against TensorRT's rules, and TensorRT engines.

Import-light: `fsa_deploy.runtime.artifact` (meta.json, hashes, tensor names) is read by the
runtime; the exporter itself (`export.onnx_export`) imports torch and the models.
"""
