"""QR tokens and rendering; pure Python (stdlib, qrcode, PIL), no Flask imports."""

from .render import to_png, to_svg
from .tokens import (
    DEVICE,
    EVENT,
    MEMBER,
    POINT,
    ExpiredToken,
    InvalidToken,
    QRError,
    TokenHeader,
    derive_key,
    extract_token,
    member_code,
    peek,
    rotating_token,
    static_token,
    verify_member_code,
    verify_rotating,
    verify_static,
)

__all__ = [
    "DEVICE",
    "EVENT",
    "MEMBER",
    "POINT",
    "ExpiredToken",
    "InvalidToken",
    "QRError",
    "TokenHeader",
    "derive_key",
    "extract_token",
    "member_code",
    "peek",
    "rotating_token",
    "static_token",
    "to_png",
    "to_svg",
    "verify_member_code",
    "verify_rotating",
    "verify_static",
]
