"""Reading one image robustly: any file Pillow can decode becomes an RGB image, anything else an
`ImageReadError` that names the file.

The extractor catches `ImageReadError` and flags the row invalid (`/samples/valid`), unless it
runs strict; nothing here silently substitutes a blank image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from embedkit.errors import EmbedkitError

# Decoding failures Pillow reports: truncated or corrupt data (OSError, including
# UnidentifiedImageError), malformed headers (SyntaxError, ValueError, EOFError) and oversized
# images.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I"}


class ImageReadError(EmbedkitError):
    """A missing, empty or undecodable image. The extractor turns it into valid=False."""


def open_image(source, name: str | None = None) -> Image.Image:
    """Decode a path or an in-memory file (bytes) into an RGB image.

    `name` is what error messages call the image (defaults to the path).
    """
    label = name or str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageReadError(f"{label}: empty image file (0 bytes)")
        fp = io.BytesIO(source)
    else:
        fp = Path(source)
        if not fp.is_file():
            raise ImageReadError(f"{label}: no such image file")
        if fp.stat().st_size == 0:
            raise ImageReadError(f"{label}: empty image file (0 bytes)")
    try:
        with Image.open(fp) as im:
            im.load()  # decode now: Image.open only reads the header, truncation shows up here
            return to_rgb(im)
    except _DECODE_ERRORS as e:
        detail = (str(e).splitlines() or [""])[0]
        raise ImageReadError(f"{label}: unreadable image ({type(e).__name__}: {detail})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB.

    Alpha (LA, PA, RGBA, palette transparency) is dropped, as `Image.convert("RGB")` does in the
    published Waterbirds/CelebA loaders, so features match theirs. 16-bit greyscale is scaled to 8
    bits first (Pillow's own conversion clips it at 255, which turns most pixels white).
    """
    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT:
        arr = np.clip(np.asarray(im, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")
