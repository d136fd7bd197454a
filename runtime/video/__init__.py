"""Video sources for `fsa segment` and `fsa app --source`: files, image sequences, cameras and
network streams (PyAV, the `video` extra), through the same Segmenter as images.

sources.py: what an argument names, decoding to RGB frames, frame selection.
run.py: the pipeline (decode, forward, post-processing and encoding overlapped; bounded queues).
outputs.py / sink.py: NAME_overlay.mp4, NAME.labels.npz or NAME/ of PNGs, NAME.json.
"""

from __future__ import annotations
