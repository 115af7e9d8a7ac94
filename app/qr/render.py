"""Render QR payloads (usually poster URLs) as PNG or SVG bytes."""

from __future__ import annotations

from io import BytesIO

import qrcode
from qrcode.constants import ERROR_CORRECT_M
from qrcode.image.pil import PilImage
from qrcode.image.svg import SvgPathFillImage


def _build(data: str, box_size: int, border: int) -> qrcode.QRCode:
    if not isinstance(data, str) or not data:
        raise ValueError("data must be a non-empty string")
    if isinstance(box_size, bool) or not isinstance(box_size, int) or box_size < 1:
        raise ValueError("box_size must be an int >= 1")
    if isinstance(border, bool) or not isinstance(border, int) or border < 0:
        raise ValueError("border must be an int >= 0")
    # M survives light print damage/smudges while keeping the symbol small.
    qr = qrcode.QRCode(error_correction=ERROR_CORRECT_M, box_size=box_size, border=border)
    qr.add_data(data)
    qr.make(fit=True)
    return qr


def to_png(data: str, *, box_size: int = 10, border: int = 4) -> bytes:
    image = _build(data, box_size, border).make_image(image_factory=PilImage)
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def to_svg(data: str, *, border: int = 4) -> bytes:
    # SvgPathFillImage emits a single <path>, which keeps the file small and crisp when scaled.
    image = _build(data, 10, border).make_image(image_factory=SvgPathFillImage)
    buf = BytesIO()
    image.save(buf)
    return buf.getvalue()
