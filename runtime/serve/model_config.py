"""Triton's ModelConfig protobuf module, for the repository writer and the offline check.

tritonclient ships it as `tritonclient/grpc/model_config_pb2.py`, but importing it the usual way
runs `tritonclient/grpc/__init__.py`, which imports grpc: with only `tritonclient[http]` installed
that raises RuntimeError ("does not include grpc support"). The module itself needs protobuf only,
so it is loaded from its file under its own name (a later `import tritonclient.grpc` reuses it).
The runtime's base install declares no protobuf; this needs the `serve` extra.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fsa_deploy.errors import FSAError

NAME = "tritonclient.grpc.model_config_pb2"
EXTRA = "pip install 'fsa-deploy[serve]'"


def model_config_pb2(what: str = "a Triton model repository") -> ModuleType:
    """The module (ModelConfig, DataType, ...); FSAError naming the extra when it cannot load."""
    if (module := sys.modules.get(NAME)) is not None:
        return module
    try:
        spec = importlib.util.find_spec("tritonclient")
        path = Path(next(iter(spec.submodule_search_locations or ()), "")) / "grpc" / "model_config_pb2.py" \
            if spec else None
        if path is None or not path.is_file():
            raise ImportError("no tritonclient with model_config_pb2")
        file_spec = importlib.util.spec_from_file_location(NAME, path)
        assert file_spec is not None and file_spec.loader is not None
        module = importlib.util.module_from_spec(file_spec)
        sys.modules[NAME] = module
        try:
            file_spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[NAME]
            raise
    except Exception as e:  # no protobuf, a protobuf older than the generated code, no tritonclient
        raise FSAError(f"{what} needs the serve extra (tritonclient's model_config_pb2 and protobuf): {EXTRA} "
                       f"({type(e).__name__}: {e})".replace("\n", " ")) from e
    return module
