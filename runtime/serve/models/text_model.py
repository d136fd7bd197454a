"""Triton python model `fsa_text` (local target): prompt embeddings on this runtime's backend."""

import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        sys.path.insert(0, str(Path(args["model_repository"]) / args["model_version"]))
        from fsa_deploy.contract import EMBEDDINGS, TOKENS
        from fsa_deploy.runtime.serve.bls import local_backend

        self.backend = local_backend(args["model_config"])
        self.names = (TOKENS, EMBEDDINGS)

    def execute(self, requests):
        tokens_name, out_name = self.names
        replies = []
        for r in requests:
            try:
                tokens = pb_utils.get_input_tensor_by_name(r, tokens_name).as_numpy()
                emb = np.ascontiguousarray(self.backend.encode_text(tokens), dtype=np.float32)
                replies.append(pb_utils.InferenceResponse([pb_utils.Tensor(out_name, emb)]))
            except Exception as e:  # noqa: BLE001
                replies.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"fsa_text: {e}")))
        return replies
