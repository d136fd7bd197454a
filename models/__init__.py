"""The PyTorch reference of FSA (CLIP via open_clip, proxies via timm).

Kept import-light on purpose: the heavy modules (`models.clip`, `models.proxies`,
`models.reference`) are imported by name where they are needed, so that the
runtime can use `fsa_deploy.errors` and `fsa_deploy.runtime.pipeline` without pulling open_clip
or timm.
"""
