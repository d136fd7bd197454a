"""Triton python model `fsa_image` (local target): crop logits on this runtime's backend.

Dynamic batching hands several requests (each one image's crops, every crop carrying its class
embeddings) to one execute(); requests with the same class embeddings run as one batch.
"""

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        sys.path.insert(0, str(Path(args["model_repository"]) / args["model_version"]))
        from fsa_deploy.contract import IMAGE, LOGITS, TEXT_EMBEDDINGS
        from fsa_deploy.runtime.serve.bls import local_backend

        self.backend = local_backend(args["model_config"])
        self.names = (IMAGE, TEXT_EMBEDDINGS, LOGITS)
        pb_utils.Logger.log_info(f"fsa_image: {self.backend.name}")

    def execute(self, requests):
        image_name, text_name, logits_name = self.names
        replies = [None] * len(requests)
        groups: dict[tuple, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # by class embeddings
        for i, r in enumerate(requests):
            crops = pb_utils.get_input_tensor_by_name(r, image_name).as_numpy()
            text = pb_utils.get_input_tensor_by_name(r, text_name).as_numpy()
            if not (text == text[:1]).all():
                replies[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    f"fsa_image: {text_name}: the crops of one request must carry the same class embeddings"))
                continue
            key = (text.shape[1:], text[0].tobytes())
            groups.setdefault(key, []).append((i, crops, text[0]))
        for members in groups.values():
            try:
                logits = self.backend.run(np.concatenate([c for _, c, _ in members]), members[0][2])
            except Exception as e:  # noqa: BLE001 - an error reply for each request of the group
                for i, _, _ in members:
                    replies[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fsa_image: {e}"))
                continue
            start = 0
            for i, c, _ in members:
                part = np.ascontiguousarray(logits[start:start + len(c)], dtype=np.float32)
                replies[i] = pb_utils.InferenceResponse([pb_utils.Tensor(logits_name, part)])
                start += len(c)
        return replies
