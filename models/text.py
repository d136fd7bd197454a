"""The prompt templates of the reference: OpenAI's 80 ImageNet templates, from open_clip.

The export writes them into meta.json, so the runtime reads them from the artefact.
"""

from __future__ import annotations


def openai_templates() -> list[str]:
    """The 80 OpenAI ImageNet templates as format strings ('a photo of a {}.')."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == 80, f"expected 80 OpenAI ImageNet templates, found {len(templates)}"
    return templates
