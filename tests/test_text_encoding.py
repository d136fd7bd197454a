"""Text encoding at the batch's longest prompt, and the class-embedding cache per class.

CLIP's text tower is causal and pools at the end token, so cutting the padding after the longest
prompt changes no embedding: checked on the tiny export's text.onnx (dynamic length) against its
own [T, 77] result and open_clip's tower, and through every path the runtime uses (the classifier,
a static-length graph fed padded tokens). ~3 s on the session's tiny export.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import tiny_reference

REL_L2 = 1e-6  # the tolerance for "the same embeddings"
PROMPTS = ["a photo of a cat.", "a bad photo of the big dog lying on a red sofa.", "x", "a photo of a tv monitor."]


def rel_l2(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b.astype(np.float64)))


@pytest.fixture(scope="module")
def text_backend(tiny_artifact):
    from fsa_deploy.runtime.artifact import Artifact
    from fsa_deploy.runtime.backends.onnxrt import OnnxRuntimeBackend

    return OnnxRuntimeBackend(Artifact.load(tiny_artifact.root), providers=["CPUExecutionProvider"])


def test_text_graph_takes_any_length_and_the_longest_prompt_gives_the_77_token_embeddings(text_backend, tiny_artifact):
    import torch

    from fsa_deploy.contract import CONTEXT_LENGTH
    from fsa_deploy.runtime.text import tokenize, trimmed

    session = text_backend._session("text.onnx")
    assert session.get_inputs()[0].shape[1] != CONTEXT_LENGTH, "the token length of text.onnx is not dynamic"
    tokens = tokenize(PROMPTS, tiny_artifact.root / "bpe_simple_vocab_16e6.txt.gz")
    short = trimmed(tokens)
    longest = int((tokens != 0).sum(axis=1).max())  # start, the longest prompt's tokens, end
    assert short.shape == (len(PROMPTS), longest) and longest < 20
    full = session.run(None, {"tokens": tokens.astype(np.int32)})[0]
    cut = session.run(None, {"tokens": short.astype(np.int32)})[0]
    assert rel_l2(cut, full) <= REL_L2
    with torch.no_grad():  # open_clip's own tower at 77 tokens: the export is the same function
        ref = tiny_reference().clip.encode_text(torch.from_numpy(tokens).long()).numpy()
    assert rel_l2(full, ref) <= 1e-5


def test_classifier_of_trimmed_prompts_equals_the_77_token_classifier(text_backend, tiny_artifact):
    from fsa_deploy.runtime.text import classifier, padded

    vocab = tiny_artifact.root / "bpe_simple_vocab_16e6.txt.gz"
    templates = ["a photo of a {}.", "itap of the {} on a long winding road in the mountains."]
    seen: list[int] = []

    def encode(tokens: np.ndarray) -> np.ndarray:
        seen.append(tokens.shape[1])
        return text_backend.encode_text(tokens)

    got = classifier(encode, ["cat", "potted plant"], templates, vocab_file=vocab)
    want = classifier(lambda t: text_backend.encode_text(padded(t)), ["cat", "potted plant"], templates,
                      vocab_file=vocab)
    assert max(seen) < 20  # the batch's longest prompt, not 77
    assert rel_l2(got, want) <= REL_L2


def test_adding_one_class_encodes_one_class(text_backend, tiny_artifact, tmp_path):
    from fsa_deploy.runtime.text import cached_classifier

    vocab = tiny_artifact.root / "bpe_simple_vocab_16e6.txt.gz"
    templates = ["a photo of a {}.", "a drawing of a {}.", "a {} in the wild."]
    prompts: list[int] = []

    def encode(tokens: np.ndarray) -> np.ndarray:
        prompts.append(len(tokens))
        return text_backend.encode_text(tokens)

    first = ["cat", "dog", "grass", "sky"]
    t1, hit1 = cached_classifier(tmp_path, "model", encode, first, templates, vocab)
    assert (sum(prompts), hit1) == (len(first) * len(templates), False)
    prompts.clear()
    t2, hit2 = cached_classifier(tmp_path, "model", encode, ["cat", "dog", "sofa", "grass", "sky"], templates, vocab)
    assert (sum(prompts), hit2) == (len(templates), False)  # only "sofa"
    assert np.array_equal(t2[[0, 1, 3, 4]], t1)  # the cached rows, in the new list's order
    prompts.clear()
    t3, hit3 = cached_classifier(tmp_path, "model", encode, ["sky", "sofa"], templates, vocab)
    assert (sum(prompts), hit3) == (0, True)
    assert np.array_equal(t3, t2[[4, 2]])
    _, hit4 = cached_classifier(tmp_path, "other model", encode, ["sky"], templates, vocab)
    assert not hit4 and sum(prompts) == len(templates)  # the key holds the model
