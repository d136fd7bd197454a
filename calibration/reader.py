"""The calibration data reader ModelOpt pulls batches from: onnxruntime's CalibrationDataReader
(get_next, iteration) plus the get_first/rewind ModelOpt also calls.

Its own module because onnxruntime.quantization costs half a second to import: only a
calibration run loads it, not `fsa calibrate --help`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from fsa_deploy import contract

if TYPE_CHECKING:
    from fsa_deploy.calibration.data import CalibrationData


class DataReader(CalibrationDataReader):
    """Batches of crops, each with the whole text matrix: ModelOpt's own provider would split
    text_embeddings along K."""

    def __init__(self, data: CalibrationData, batch: int):
        self.feeds = [{contract.IMAGE: data.crops[i : i + batch], contract.TEXT_EMBEDDINGS: data.text}
                      for i in range(0, len(data.crops), batch)]
        self.i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def get_first(self) -> dict[str, np.ndarray]:
        return self.feeds[0]

    def rewind(self) -> None:
        self.i = 0

    def __len__(self) -> int:
        return len(self.feeds)
