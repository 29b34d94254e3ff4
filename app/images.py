"""Decode the images that clients send (base64 or data URLs of PNG, JPEG or WebP) into arrays.

Only decoding and its limits live here; turning pixels into model input is `model.preprocess`.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SIDE = 4096  # a 1 x 4,000,000 strip passes the pixel limit but costs ~1 GB to resample
# Pillow warns (and at twice the size raises) on images over Image.MAX_IMAGE_PIXELS. `decode_image`
# refuses far smaller ones itself, with a 413 that names the limit, so the warning adds nothing; and
# `warnings.catch_warnings` to turn it into an error is not thread-safe, while decoding runs in threads.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_DATA_URL = re.compile(r"^data:(?P<mime>[\w/+.-]*)(?:;[\w=.-]+)*?(?P<b64>;base64)?,", re.ASCII)


class ImageError(ValueError):
    """The image cannot be used; `status` is the HTTP status it deserves."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def decode_base64(text: str) -> bytes:
    """A data URL or plain base64 (standard or URL-safe, padding optional) -> bytes."""
    match = _DATA_URL.match(text)
    if match:
        if not match.group("b64"):
            raise ImageError("the data URL is not base64-encoded; send canvas.toDataURL() output")
        text = text[match.end():]
    text = "".join(text.split())  # drop whitespace (as re.sub(r"\s+", ...) would, 20x faster)
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"the image is not valid base64 ({exc})") from exc


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """PNG/JPEG/WebP bytes -> a Pillow image whose header is read and checked (format, size), not
    yet decoded: its size is known before any costly work is done."""
    if not data:
        raise ImageError("the image is empty (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError("the data is not a PNG, JPEG or WebP image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is corrupt or truncated ({exc})") from exc
    if img.format not in FORMATS:
        raise ImageError(f"the image is {img.format}; send PNG, JPEG or WebP", status=415)
    width, height = img.size
    if max(width, height) > MAX_SIDE:
        raise ImageError(f"the image is {width}x{height} pixels; neither side may exceed {MAX_SIDE} "
                         f"pixels, scale it down", status=413)
    if width * height > max_pixels:
        raise ImageError(f"the image is {width}x{height} pixels, over the limit of {max_pixels} "
                         f"pixels; scale it down", status=413)
    return img


def to_rgba(img: Image.Image) -> np.ndarray:
    """Decode an image from `open_image` -> (H, W, 4) uint8 RGBA."""
    try:
        img.load()
        return np.asarray(img if img.mode == "RGBA" else img.convert("RGBA"))
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageError("the data is not a PNG, JPEG or WebP image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"the image is corrupt or truncated ({exc})") from exc


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """PNG/JPEG/WebP bytes -> (H, W, 4) uint8 RGBA; refuses other formats and oversized images."""
    return to_rgba(open_image(data, max_pixels))
