"""Signed, versioned, compact tokens carried by QR codes.

Layout: ``<kind><version>.<object_id>[.<extra fields>].<sig>``, ASCII only, e.g.

* ``p1.42.<sig>``                      collection point poster (static)
* ``e1.7.<window>.<sig>``              event rotating check-in code
* ``m1.5.<exp>.<nonce>.<sig>``         resident member code

``sig`` is base64url (unpadded) of HMAC-SHA256(key, everything before the last dot)
truncated to 16 bytes. The kind and version are inside the signed text, so a token
can never be replayed as another kind. The clock is always passed in by the caller.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple
from urllib.parse import unquote

POINT = "p"  # collection point poster (static)
EVENT = "e"  # event rotating check-in code
MEMBER = "m"  # resident member code
DEVICE = "d"  # reserved

VERSION = 1
SUPPORTED_VERSIONS = frozenset({VERSION})

MAX_TOKEN_LEN = 256
# A pasted poster URL is a bit longer than a token, but nothing legitimate is huge.
MAX_SCANNED_LEN = 2048
SIG_BYTES = 16
SIG_CHARS = 22  # len(base64url(16 bytes)) without padding
MIN_KEY_BYTES = 16
MAX_OBJECT_ID = 10**18 - 1  # 18 digits: fits a signed 64-bit column
NONCE_BYTES = 8

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)

# Canonical forms only (no sign, no leading zeros, no "_", ASCII digits), so each
# value has exactly one spelling and int() never sees something surprising.
_ID_RE = re.compile(r"[1-9][0-9]{0,17}")
_UINT_RE = re.compile(r"0|[1-9][0-9]{0,11}")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{1,32}")
_SIG_RE = re.compile(rf"[A-Za-z0-9_-]{{{SIG_CHARS}}}")
_VERSION_RE = re.compile(r"[1-9][0-9]{0,2}")

# Number of fields between object_id and sig, per kind, with their validators.
_EXTRA_FIELDS: dict[str, tuple[re.Pattern[str], ...]] = {
    POINT: (),
    DEVICE: (),
    EVENT: (_UINT_RE,),
    MEMBER: (_UINT_RE, _NONCE_RE),
}
_STATIC_KINDS = frozenset({POINT, DEVICE})
_ROTATING_KINDS = frozenset({EVENT})


class QRError(Exception):
    """Base class for every token problem the API should turn into a 4xx."""


class InvalidToken(QRError):
    """Malformed, unknown kind/version or bad signature."""


class ExpiredToken(QRError):
    """Correctly signed but outside its validity period."""


@dataclass(frozen=True)
class TokenHeader:
    kind: str
    version: int
    object_id: int


@dataclass(frozen=True)
class _Parsed:
    header: TokenHeader
    extra: tuple[str, ...]
    signed: str
    sig: str


# --- key handling -------------------------------------------------------------


def _as_bytes(value: str | bytes, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise TypeError(f"{what} must be str or bytes, not {type(value).__name__}")


def derive_key(master: str | bytes, *parts: str | bytes) -> bytes:
    """Derive a 32-byte purpose/object key: HMAC-SHA256(master, len-prefixed parts).

    Each part is length-prefixed so ("ab", "c") and ("a", "bc") give unrelated keys.
    """
    master_b = _as_bytes(master, "master")
    if not master_b:
        # An unset secret would otherwise silently produce a publicly computable key.
        raise ValueError("master secret must not be empty")
    msg = bytearray(b"qr-kdf-v1")
    for part in parts:
        part_b = _as_bytes(part, "key part")
        msg += len(part_b).to_bytes(4, "big")
        msg += part_b
    return hmac.new(master_b, bytes(msg), hashlib.sha256).digest()


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("key must be bytes (use derive_key)")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"key must be at least {MIN_KEY_BYTES} bytes (use derive_key)")
    return bytes(key)


def _sign(key: bytes, signed: str) -> str:
    mac = hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()[:SIG_BYTES]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def _check_sig(parsed: _Parsed, key: bytes) -> None:
    # Compare the encoded text, not decoded bytes: the last base64 char carries 2
    # padding bits, and decoding would let 4 different spellings verify.
    if not hmac.compare_digest(_sign(key, parsed.signed), parsed.sig):
        raise InvalidToken("bad signature")


# --- time helpers ---------------------------------------------------------------


def _check_now(now: datetime) -> datetime:
    if not isinstance(now, datetime):
        raise TypeError("now must be a datetime")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime; pass a timezone-aware UTC datetime")
    return now.astimezone(UTC)


def _check_positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive int")
    return value


def _check_object_id(object_id: int) -> int:
    _check_positive_int(object_id, "object_id")
    if object_id > MAX_OBJECT_ID:
        raise ValueError("object_id too large")
    return object_id


def _window_index(now: datetime, window_s: int) -> int:
    # timedelta floor division is exact integer arithmetic (no float rounding at edges).
    return (now - _EPOCH) // timedelta(seconds=window_s)


def _unix_seconds(now: datetime) -> int:
    return (now - _EPOCH) // _ONE_SECOND


# --- parsing ----------------------------------------------------------------------


def extract_token(scanned: str) -> str:
    """Return the bare token from either a bare token or a ``{base}/q/<token>`` URL, percent-encoded or not."""
    if not isinstance(scanned, str):
        raise InvalidToken("scanned value must be text")
    text = scanned.strip()
    if len(text) > MAX_SCANNED_LEN:
        raise InvalidToken("scanned value too long")
    if "%" in text:  # the URL as WeChat hands it to a mini-program (options.q): a token never holds a %
        text = unquote(text).strip()
    # Split by hand rather than urllib.parse: urlsplit raises ValueError on odd netlocs.
    text = text.split("#", 1)[0].split("?", 1)[0]
    if "/" in text:
        idx = text.rfind("/q/")
        if idx < 0:
            raise InvalidToken("not a QR link")
        text = text[idx + 3 :].rstrip("/")
    if not text:
        raise InvalidToken("empty token")
    return text


def _parse(token: str) -> _Parsed:
    if not isinstance(token, str):
        raise InvalidToken("token must be text")
    if not token:
        raise InvalidToken("empty token")
    if len(token) > MAX_TOKEN_LEN:
        raise InvalidToken("token too long")
    if not token.isascii():
        raise InvalidToken("token must be ASCII")

    parts = token.split(".")
    prefix = parts[0]
    kind, version_text = prefix[:1], prefix[1:]
    if kind not in _EXTRA_FIELDS:
        raise InvalidToken("unknown token kind")
    if not _VERSION_RE.fullmatch(version_text) or int(version_text) not in SUPPORTED_VERSIONS:
        raise InvalidToken("unsupported token version")

    extra_patterns = _EXTRA_FIELDS[kind]
    if len(parts) != 3 + len(extra_patterns):
        raise InvalidToken("wrong number of token fields")
    id_text, extra, sig = parts[1], tuple(parts[2:-1]), parts[-1]
    if not _ID_RE.fullmatch(id_text):
        raise InvalidToken("bad object id")
    for pattern, value in zip(extra_patterns, extra, strict=True):
        if not pattern.fullmatch(value):
            raise InvalidToken("bad token field")
    if not _SIG_RE.fullmatch(sig):
        raise InvalidToken("bad signature encoding")

    header = TokenHeader(kind=kind, version=int(version_text), object_id=int(id_text))
    return _Parsed(header=header, extra=extra, signed=token.rpartition(".")[0], sig=sig)


def peek(token: str) -> TokenHeader:
    """Parse without verifying, so the caller can load the per-object key."""
    return _parse(token).header


def _parse_expected(token: str, kind: str, key: bytes) -> _Parsed:
    parsed = _parse(token)
    if parsed.header.kind != kind:
        raise InvalidToken("unexpected token kind")
    _check_sig(parsed, key)
    return parsed


def _build(kind: str, object_id: int, extra: tuple[str, ...], key: bytes) -> str:
    signed = ".".join((f"{kind}{VERSION}", str(object_id), *extra))
    token = f"{signed}.{_sign(key, signed)}"
    # Never hand out something our own parser would refuse.
    _parse(token)
    return token


def _require_kind(kind: str, allowed: frozenset[str], what: str) -> str:
    if kind not in allowed:
        raise ValueError(f"{kind!r} is not a {what} token kind")
    return kind


# --- static tokens (posters) --------------------------------------------------------


def static_token(kind: str, object_id: int, key: bytes) -> str:
    _require_kind(kind, _STATIC_KINDS, "static")
    return _build(kind, _check_object_id(object_id), (), _check_key(key))


def verify_static(token: str, kind: str, key: bytes) -> int:
    _require_kind(kind, _STATIC_KINDS, "static")
    key = _check_key(key)
    return _parse_expected(token, kind, key).header.object_id


# --- rotating tokens (event check-in screens) ------------------------------------------


def rotating_token(kind: str, object_id: int, key: bytes, now: datetime, window_s: int = 30) -> tuple[str, datetime]:
    """Token for the current time window; returns (token, end of the next window)."""
    _require_kind(kind, _ROTATING_KINDS, "rotating")
    now = _check_now(now)
    _check_positive_int(window_s, "window_s")
    window = _window_index(now, window_s)
    if window < 0:
        raise ValueError("now is before the unix epoch")
    token = _build(kind, _check_object_id(object_id), (str(window),), _check_key(key))
    # Accepted during this window and the next one (see verify_rotating).
    expires_at = _EPOCH + timedelta(seconds=(window + 2) * window_s)
    return token, expires_at


def verify_rotating(token: str, kind: str, key: bytes, now: datetime, window_s: int = 30) -> int:
    _require_kind(kind, _ROTATING_KINDS, "rotating")
    key = _check_key(key)
    now = _check_now(now)
    _check_positive_int(window_s, "window_s")
    # Signature first: a forged token must never be reported as merely expired.
    parsed = _parse_expected(token, kind, key)
    window = int(parsed.extra[0])
    current = _window_index(now, window_s)
    if window > current + 1:  # the next window is the minting server's, its clock a moment ahead of this one's
        raise InvalidToken("token window is in the future")
    if window < current - 1:
        raise ExpiredToken("token expired")
    return parsed.header.object_id


# --- member codes ----------------------------------------------------------------------


def member_code(
    resident_id: int, key: bytes, now: datetime, ttl_s: int = 120, nonce: str | None = None
) -> tuple[str, datetime]:
    """Short-lived resident code; returns (token, expires_at)."""
    now = _check_now(now)
    _check_positive_int(ttl_s, "ttl_s")
    if nonce is None:
        nonce = secrets.token_urlsafe(NONCE_BYTES)
    elif not isinstance(nonce, str) or not _NONCE_RE.fullmatch(nonce):
        raise ValueError("nonce must be 1-32 base64url characters")
    # Whole seconds, rounded down, so a code never lives longer than ttl_s.
    exp = _unix_seconds(now) + ttl_s
    if exp <= 0:
        raise ValueError("now is before the unix epoch")
    token = _build(MEMBER, _check_object_id(resident_id), (str(exp), nonce), _check_key(key))
    return token, _EPOCH + timedelta(seconds=exp)


class MemberCode(NamedTuple):
    resident_id: int
    nonce: str
    expires_at: datetime

    def expired(self, now: datetime) -> bool:
        return now >= self.expires_at  # a whole second: the code's last valid moment is just before


def read_member_code(token: str, key: bytes, now: datetime, *, expired: bool = False) -> MemberCode:
    """The resident a valid member code names, and its nonce (what makes this code this one). With `expired=True`
    an authentic code is read whatever its age: to recognise a late retry of one already spent, or to say whose a
    code is before whether it has expired (`MemberCode.expired`)."""
    key = _check_key(key)
    now = _check_now(now)
    parsed = _parse_expected(token, MEMBER, key)
    code = MemberCode(parsed.header.object_id, parsed.extra[1], _EPOCH + timedelta(seconds=int(parsed.extra[0])))
    if not expired and code.expired(now):
        raise ExpiredToken("member code expired")
    return code


def verify_member_code(token: str, key: bytes, now: datetime) -> int:
    return read_member_code(token, key, now).resident_id
