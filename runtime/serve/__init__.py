"""Serving on NVIDIA Triton Inference Server.

- `repository`: `fsa triton` writes a model repository (text model, image model, and the
  python-backend model `fsa_segment` that runs this runtime's Segmenter, calling the other two
  through BLS); `fsa serve` writes its local target (every model a python model) to a temp dir.
- `env`: the serving environment (PyTriton's wheel for the tritonserver binary, numpy < 2).
- `server`: `fsa serve`, tritonserver as a child process group, stopped cleanly.
- `check`: the offline config.pbtxt check (protobuf parse + BLS wiring).
- `models/`: the model.py files, copied into the repository's version folders.
"""
