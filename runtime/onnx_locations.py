"""The external-data file names an .onnx refers to, read from its bytes (no protobuf library).

A hash of the graph reads its bytes once; the scanner sees every `location` on the way, and each
must be a plain, recorded file name of the folder (runtime/trust.py), checked before ONNX Runtime
or onnx opens the graph.
"""

from __future__ import annotations

import os
from pathlib import Path

from fsa_deploy.errors import FSAError, escape
from fsa_deploy.runtime.trust import contained

# TensorProto.external_data is a list of StringStringEntryProto {1: key, 2: value}; the entry
# {key: "location", value: NAME} is these bytes, then NAME's length (a varint) and NAME
_LOCATION = b"\x0a\x08location\x12"


def locations_in(data: bytes) -> list[str]:
    """The external-data file names an ONNX model's bytes refer to (no protobuf library needed)."""
    found, i = [], data.find(_LOCATION)
    while i >= 0:
        j, n, shift = i + len(_LOCATION), 0, 0
        while j < len(data) and shift < 35:
            b = data[j]
            n |= (b & 0x7F) << shift
            j += 1
            shift += 7
            if not b & 0x80:
                break
        if j + n <= len(data):  # else cut at the block's end: the next block (overlapping) holds it whole
            found.append(data[j:j + n].decode("utf-8", "replace"))
        i = data.find(_LOCATION, i + 1)
    return found


class LocationScanner:
    """Feed an .onnx file's blocks in order (as a hash reads them); `names` then holds every
    external-data location. Blocks overlap by a margin so a record cut in two is still seen."""

    MARGIN = 4096 + len(_LOCATION) + 5

    def __init__(self) -> None:
        self.names: set[str] = set()
        self._tail = b""

    def feed(self, block: bytes) -> None:
        if self._tail:  # a record that starts in the previous block's end
            self.names.update(locations_in(self._tail + block[: self.MARGIN]))
        self.names.update(locations_in(block))
        self._tail = block[-self.MARGIN:]


def check_locations(root: str | os.PathLike[str], graph: str, names: set[str], recorded: set[str]) -> None:
    """Every external-data location of `graph` is a plain, recorded file name of `root`."""
    for name in sorted(names):
        contained(root, name, f"external-data location inside {graph}")
        if name not in recorded:
            raise FSAError(f"{escape(str(Path(root) / graph))}: its external data {escape(name)!r} is not recorded "
                           "in meta.json; refused")
