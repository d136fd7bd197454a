"""Image loading shared by the reference and the runtime: any Pillow mode to RGB, EXIF applied."""

from __future__ import annotations

import importlib.util
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from fsa_deploy.errors import FSAError
from fsa_deploy.runtime import environ

MAX_PIXELS = 20_000 * 20_000  # above this, refuse rather than exhaust memory (FSA_MAX_PIXELS overrides)
MAX_PIXELS_ENV = "FSA_MAX_PIXELS"


def max_pixels() -> int:
    """The one pixel limit: $FSA_MAX_PIXELS, else MAX_PIXELS. Pillow's own decompression-bomb
    limit (89.5 MP by default) is set from it, so that the two never disagree."""
    return environ.value(MAX_PIXELS_ENV) if environ.is_set(MAX_PIXELS_ENV) else MAX_PIXELS


def encode(img: Any, format: str = "PNG", **kw: Any) -> bytes:
    """A PIL image encoded in memory (files are written by runtime/gate.py)."""
    buf = io.BytesIO()
    img.save(buf, format=format, **kw)
    return buf.getvalue()


def _too_large(path: object, what: str, limit: int) -> FSAError:
    return FSAError(f"{path}: {what} is above the limit of {limit:,} pixels ({limit / 1e6:g} MP); "
                    f"set {MAX_PIXELS_ENV} to raise it")


class NonFinitePixels(ValueError):
    """A float image holding NaN or Infinity: refused, never turned into black pixels."""

    def __init__(self, count: int):
        super().__init__(f"{count:,} NaN or infinite pixels (a float image must hold finite values)")


def to_rgb(img) -> np.ndarray:
    """A PIL image of any mode (L, LA, P, RGBA, I;16, I, F, CMYK, ...) -> uint8 [H, W, 3].

    Alpha is composited on black; 16-bit and float images are scaled from their range.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if not np.isfinite(a).all():  # NaN would become black (or class 0) silently
            raise NonFinitePixels(int(a.size - np.isfinite(a).sum()))
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """A file -> uint8 array [3, H, W] RGB, EXIF orientation applied; one-line errors."""
    if not os.path.exists(path):
        if os.path.islink(path):  # exists() follows links: a loop or a dangling link is not "no such file"
            raise FSAError(f"{path}: a symlink that leads nowhere (a loop or a missing target)")
        raise FSAError(f"{path}: no such file")
    if os.path.isdir(path):
        raise FSAError(f"{path}: is a folder, not an image")
    if not os.path.isfile(path):  # a FIFO would block the read forever; a device never ends
        raise FSAError(f"{path}: not a regular file (a FIFO, socket or device), not an image")
    if os.path.getsize(path) == 0:
        raise FSAError(f"{path}: empty file (0 bytes)")
    return decode_image(path, path)


def decode_image(source: str | os.PathLike[str] | BinaryIO, name: object) -> np.ndarray:
    """An image file (a path or a binary file object, e.g. a request's bytes) -> uint8 [3, H, W]
    RGB, EXIF applied, under the one pixel limit; errors are one line that starts with `name`."""
    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit  # Pillow refuses at twice this in open(); we refuse above it, below
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our check below says more
            with Image.open(source) as img:
                if img.width * img.height > limit:
                    raise _too_large(name, f"{img.width}x{img.height} = {img.width * img.height:,} pixels", limit)
                img.load()
                rgb = to_rgb(ImageOps.exif_transpose(img))
    except FSAError:
        raise
    except NonFinitePixels as e:
        raise FSAError(f"{name}: {e}") from None
    except UnidentifiedImageError as e:
        raise FSAError(f"{name}: not an image Pillow can read") from e
    except Image.DecompressionBombError as e:
        raise _too_large(name, "the image (more than twice the limit)", limit) from e
    except (OSError, SyntaxError, ValueError) as e:
        raise FSAError(f"{name}: damaged or truncated image ({str(e).splitlines()[0][:120]})") from e
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise FSAError(f"{name}: image has no pixels")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


SAMPLE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")


def image_suffixes() -> frozenset[str]:
    """File suffixes Pillow opens (its stub formats, which need a handler installed, left out):
    what a folder given as images expands to, in every verb."""
    def opens(fmt: str) -> bool:
        factory = Image.OPEN.get(fmt, (None,))[0]
        return factory is not None and not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))

    return frozenset(ext for ext, fmt in Image.registered_extensions().items() if opens(fmt))


def expand_images(items: Sequence[str | os.PathLike[str]], option: str = "") -> tuple[list[Path], list[str]]:
    """Files as given, folders as their image files (sorted; the suffixes Pillow opens): the one
    expansion of every verb's image arguments. Returns (files, error lines); `option` (--images)
    starts each error line when the images came through one."""
    suffixes = image_suffixes()
    lead = f"{option} " if option else ""
    files: list[Path] = []
    errors: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
            if not found:
                errors.append(f"{lead}{item}: folder has no image files")
            files.extend(found)
        elif path.exists() or path.is_symlink():  # a broken link: load_image says what is wrong with it
            files.append(path)
        else:
            errors.append(f"{lead}{item}: no such file or folder")
    return files, errors


def checked_image_files(items: Sequence[str | os.PathLike[str]], option: str) -> list[Path]:
    """`expand_images`, its first error raised, and each file's header read by Pillow: before any work,
    so a missing or unreadable `--images` file is refused in a second, not after minutes of export."""
    from PIL import Image, UnidentifiedImageError  # noqa: PLC0415 - keeps this module's import free of Pillow

    files, errors = expand_images(items, option)
    if errors:
        raise FSAError(errors[0])
    for f in files:
        try:
            with Image.open(f):
                pass
        except UnidentifiedImageError:
            raise FSAError(f"{option} {f}: not an image Pillow can read") from None
        except OSError as e:
            raise FSAError(f"{option} {f}: cannot read it ({e.strerror or e})") from None
    return files


def sample_photos() -> list[str]:
    """Real photos that scikit-image's wheel ships (found by path; skimage is not imported)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FSAError("no images given and scikit-image's sample photos are not installed: "
                       "pip install scikit-image, or pass --images")
    root = os.path.join(list(spec.submodule_search_locations)[0], "data")
    return [os.path.join(root, n) for n in SAMPLE_PHOTOS if os.path.isfile(os.path.join(root, n))]
