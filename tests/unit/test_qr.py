"""Unit tests for app.qr (pure: no Flask, no sleeping; the clock is always passed in)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import string
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from io import BytesIO

import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from app.qr import (
    DEVICE,
    EVENT,
    MEMBER,
    POINT,
    ExpiredToken,
    InvalidToken,
    MemberCode,
    QRError,
    TokenHeader,
    derive_key,
    extract_token,
    member_code,
    peek,
    read_member_code,
    rotating_token,
    static_token,
    to_png,
    to_svg,
    verify_member_code,
    verify_rotating,
    verify_static,
)

MASTER = "test-master-secret"
POINT_KEY = derive_key(MASTER, "point", "per-point-secret-v1")
EVENT_KEY = derive_key(MASTER, "event", "per-event-secret-v1")
MEMBER_KEY = derive_key(MASTER, "member")
# 2025-06-01T12:00:05Z: 5 s into a 30 s window, so +30 s stays in the next window.
NOW = datetime(2025, 6, 1, 12, 0, 5, tzinfo=UTC)
WINDOW = 30

TAMPER_ALPHABET = string.ascii_letters + string.digits + "-_.=+/ "


def _all_tokens() -> dict[str, tuple[str, Callable[[str], int]]]:
    """One fresh token per kind with a verifier that must accept it at NOW."""
    event_token, _ = rotating_token(EVENT, 7, EVENT_KEY, NOW, WINDOW)
    member_token, _ = member_code(5, MEMBER_KEY, NOW)
    return {
        "point": (static_token(POINT, 42, POINT_KEY), lambda t: verify_static(t, POINT, POINT_KEY)),
        "device": (static_token(DEVICE, 9, POINT_KEY), lambda t: verify_static(t, DEVICE, POINT_KEY)),
        "event": (event_token, lambda t: verify_rotating(t, EVENT, EVENT_KEY, NOW, WINDOW)),
        "member": (member_token, lambda t: verify_member_code(t, MEMBER_KEY, NOW)),
    }


def _tampered(token: str) -> list[str]:
    out = []
    for i, original in enumerate(token):
        for ch in TAMPER_ALPHABET:
            if ch != original:
                out.append(token[:i] + ch + token[i + 1 :])
    return out


# --- round trips ------------------------------------------------------------------


def test_static_round_trip() -> None:
    token = static_token(POINT, 42, POINT_KEY)
    assert token.startswith("p1.42.")
    assert verify_static(token, POINT, POINT_KEY) == 42
    assert peek(token) == TokenHeader(kind=POINT, version=1, object_id=42)


def test_device_round_trip() -> None:
    token = static_token(DEVICE, 3, POINT_KEY)
    assert token.startswith("d1.3.")
    assert verify_static(token, DEVICE, POINT_KEY) == 3


def test_rotating_round_trip() -> None:
    token, expires_at = rotating_token(EVENT, 7, EVENT_KEY, NOW, WINDOW)
    window = int(NOW.timestamp()) // WINDOW
    assert token.startswith(f"e1.7.{window}.")
    assert verify_rotating(token, EVENT, EVENT_KEY, NOW, WINDOW) == 7
    assert peek(token) == TokenHeader(kind=EVENT, version=1, object_id=7)
    # End of the next window.
    assert expires_at == datetime(2025, 6, 1, 12, 1, 0, tzinfo=UTC)
    assert expires_at.tzinfo is not None
    assert expires_at.utcoffset() == timedelta(0)


def test_member_round_trip() -> None:
    token, expires_at = member_code(5, MEMBER_KEY, NOW)
    assert token.startswith(f"m1.5.{int(NOW.timestamp()) + 120}.")
    assert verify_member_code(token, MEMBER_KEY, NOW) == 5
    assert expires_at == NOW + timedelta(seconds=120)
    assert expires_at.utcoffset() == timedelta(0)
    assert peek(token) == TokenHeader(kind=MEMBER, version=1, object_id=5)


def test_member_codes_differ_by_nonce() -> None:
    first, _ = member_code(5, MEMBER_KEY, NOW)
    second, _ = member_code(5, MEMBER_KEY, NOW)
    assert first != second
    fixed_a, _ = member_code(5, MEMBER_KEY, NOW, nonce="abc")
    fixed_b, _ = member_code(5, MEMBER_KEY, NOW, nonce="abc")
    assert fixed_a == fixed_b
    assert fixed_a.split(".")[3] == "abc"


def test_read_member_code_names_the_resident_and_the_nonce() -> None:
    """The nonce is what makes a code single-use: the caller gets it back exactly as issued."""
    code, _ = member_code(5, MEMBER_KEY, NOW, nonce="abc")
    assert read_member_code(code, MEMBER_KEY, NOW) == MemberCode(
        resident_id=5, nonce="abc", expires_at=NOW.replace(microsecond=0) + timedelta(seconds=120)
    )


def test_tokens_are_compact_ascii() -> None:
    for token, _ in _all_tokens().values():
        assert token.isascii()
        assert len(token) <= 64
        assert len(token.rsplit(".", 1)[1]) == 22


def test_non_utc_aware_datetime_is_accepted() -> None:
    beijing = NOW.astimezone(timezone(timedelta(hours=8)))
    token, expires_at = member_code(5, MEMBER_KEY, beijing)
    assert expires_at.utcoffset() == timedelta(0)
    assert verify_member_code(token, MEMBER_KEY, NOW) == 5


# --- tampering and keys -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["point", "device", "event", "member"])
def test_any_single_character_change_is_invalid(name: str) -> None:
    token, verify = _all_tokens()[name]
    assert verify(token) > 0
    for bad in _tampered(token):
        with pytest.raises(InvalidToken):
            verify(bad)


@pytest.mark.parametrize("name", ["point", "device", "event", "member"])
def test_truncated_or_extended_tokens_are_invalid(name: str) -> None:
    token, verify = _all_tokens()[name]
    for bad in (token[:-1], token + "A", token + ".", "." + token, token.rsplit(".", 1)[0]):
        with pytest.raises(InvalidToken):
            verify(bad)


def test_rotated_object_secret_invalidates_old_tokens() -> None:
    old_key = derive_key(MASTER, "point", "old-secret")
    new_key = derive_key(MASTER, "point", "new-secret")
    token = static_token(POINT, 42, old_key)
    assert verify_static(token, POINT, old_key) == 42
    with pytest.raises(InvalidToken):
        verify_static(token, POINT, new_key)

    event_token, _ = rotating_token(EVENT, 7, old_key, NOW)
    with pytest.raises(InvalidToken):
        verify_rotating(event_token, EVENT, new_key, NOW)

    code, _ = member_code(5, old_key, NOW)
    with pytest.raises(InvalidToken):
        verify_member_code(code, new_key, NOW)


def test_kind_mismatch_is_invalid() -> None:
    point = static_token(POINT, 42, POINT_KEY)
    device = static_token(DEVICE, 42, POINT_KEY)
    with pytest.raises(InvalidToken):
        verify_static(point, DEVICE, POINT_KEY)
    with pytest.raises(InvalidToken):
        verify_static(device, POINT, POINT_KEY)
    with pytest.raises(InvalidToken):
        verify_rotating(point, EVENT, POINT_KEY, NOW)
    with pytest.raises(InvalidToken):
        verify_member_code(point, POINT_KEY, NOW)
    # Swapping only the kind letter breaks the signature too (kind is signed).
    with pytest.raises(InvalidToken):
        verify_static("d" + point[1:], DEVICE, POINT_KEY)


def test_wrong_kind_argument_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="not a static token kind"):
        static_token(EVENT, 1, POINT_KEY)
    with pytest.raises(ValueError, match="not a static token kind"):
        verify_static("p1.1.x", MEMBER, POINT_KEY)
    with pytest.raises(ValueError, match="not a rotating token kind"):
        rotating_token(POINT, 1, POINT_KEY, NOW)
    with pytest.raises(ValueError, match="not a rotating token kind"):
        verify_rotating(static_token(POINT, 1, POINT_KEY), POINT, POINT_KEY, NOW)
    with pytest.raises(ValueError, match="not a static token kind"):
        static_token("x", 1, POINT_KEY)


@pytest.mark.parametrize("object_id", [0, -1, 10**18, True])
def test_bad_object_id_on_issue(object_id: int) -> None:
    with pytest.raises(ValueError, match="object_id"):
        static_token(POINT, object_id, POINT_KEY)


def test_largest_object_id_round_trips() -> None:
    token = static_token(POINT, 10**18 - 1, POINT_KEY)
    assert verify_static(token, POINT, POINT_KEY) == 10**18 - 1


def test_short_or_wrong_type_key_rejected() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        static_token(POINT, 1, b"short")
    with pytest.raises(TypeError):
        static_token(POINT, 1, "a-str-key-is-not-bytes")  # type: ignore[arg-type]


def test_key_length_is_checked_at_the_boundary_on_issue_and_verify() -> None:
    key16 = bytes(range(16))
    assert verify_static(static_token(POINT, 1, key16), POINT, key16) == 1
    with pytest.raises(ValueError, match="at least 16 bytes"):
        static_token(POINT, 1, key16[:15])
    with pytest.raises(ValueError, match="at least 16 bytes"):
        verify_static(static_token(POINT, 1, key16), POINT, key16[:15])


def test_derive_key() -> None:
    a = derive_key(MASTER, "point", "s1")
    assert len(a) == 32
    assert a == derive_key(MASTER.encode(), b"point", b"s1")
    assert a != derive_key(MASTER, "point", "s2")
    assert a != derive_key(MASTER, "event", "s1")
    assert a != derive_key("other-master", "point", "s1")
    # Length prefixes keep part boundaries significant.
    assert derive_key(MASTER, "ab", "c") != derive_key(MASTER, "a", "bc")
    assert derive_key(MASTER, "point") != derive_key(MASTER, "point", "")
    with pytest.raises(ValueError, match="must not be empty"):
        derive_key("", "point")


# --- time handling -------------------------------------------------------------------------


def test_rotating_windows() -> None:
    token, expires_at = rotating_token(EVENT, 7, EVENT_KEY, NOW, WINDOW)
    assert verify_rotating(token, EVENT, EVENT_KEY, NOW, WINDOW) == 7
    # Previous window is still accepted.
    assert verify_rotating(token, EVENT, EVENT_KEY, NOW + timedelta(seconds=30), WINDOW) == 7
    assert verify_rotating(token, EVENT, EVENT_KEY, expires_at - timedelta(microseconds=1), WINDOW) == 7
    with pytest.raises(ExpiredToken):
        verify_rotating(token, EVENT, EVENT_KEY, expires_at, WINDOW)
    with pytest.raises(ExpiredToken):
        verify_rotating(token, EVENT, EVENT_KEY, NOW + timedelta(seconds=60), WINDOW)


def test_rotating_next_window_is_accepted_and_later_ones_are_invalid() -> None:
    """Minted by a server whose clock is a moment ahead, into the next window: authentic, not forged."""
    edge = datetime(2025, 6, 1, 12, 0, 30, tzinfo=UTC)
    ahead, _ = rotating_token(EVENT, 7, EVENT_KEY, edge, WINDOW)
    assert verify_rotating(ahead, EVENT, EVENT_KEY, edge - timedelta(milliseconds=1), WINDOW) == 7
    future, _ = rotating_token(EVENT, 7, EVENT_KEY, edge + timedelta(seconds=30), WINDOW)
    with pytest.raises(InvalidToken):
        verify_rotating(future, EVENT, EVENT_KEY, edge - timedelta(milliseconds=1), WINDOW)


def test_forged_old_rotating_token_is_invalid_not_expired() -> None:
    forged, _ = rotating_token(EVENT, 7, derive_key("attacker", "x"), NOW, WINDOW)
    with pytest.raises(InvalidToken):
        verify_rotating(forged, EVENT, EVENT_KEY, NOW + timedelta(hours=1), WINDOW)


def test_rotating_custom_window() -> None:
    token, expires_at = rotating_token(EVENT, 7, EVENT_KEY, NOW, window_s=10)
    assert expires_at == datetime(2025, 6, 1, 12, 0, 20, tzinfo=UTC)
    assert verify_rotating(token, EVENT, EVENT_KEY, NOW + timedelta(seconds=10), window_s=10) == 7
    with pytest.raises(ExpiredToken):
        verify_rotating(token, EVENT, EVENT_KEY, NOW + timedelta(seconds=15), window_s=10)
    with pytest.raises(ValueError, match="window_s"):
        rotating_token(EVENT, 7, EVENT_KEY, NOW, window_s=0)
    with pytest.raises(ValueError, match="window_s"):
        verify_rotating(token, EVENT, EVENT_KEY, NOW, window_s=0)


def test_rotating_default_window_is_thirty_seconds() -> None:
    token, expires_at = rotating_token(EVENT, 7, EVENT_KEY, NOW)
    assert token == rotating_token(EVENT, 7, EVENT_KEY, NOW, WINDOW)[0]
    assert expires_at == datetime(2025, 6, 1, 12, 1, 0, tzinfo=UTC)
    assert verify_rotating(token, EVENT, EVENT_KEY, expires_at - timedelta(microseconds=1)) == 7
    with pytest.raises(ExpiredToken):
        verify_rotating(token, EVENT, EVENT_KEY, expires_at)


def test_member_code_expiry() -> None:
    token, _ = member_code(5, MEMBER_KEY, NOW, ttl_s=120)
    assert verify_member_code(token, MEMBER_KEY, NOW + timedelta(seconds=119)) == 5
    with pytest.raises(ExpiredToken):
        verify_member_code(token, MEMBER_KEY, NOW + timedelta(seconds=120))


def test_member_code_never_outlives_ttl() -> None:
    # Sub-second "now" rounds the expiry down, never up.
    now = NOW + timedelta(microseconds=999_999)
    token, expires_at = member_code(5, MEMBER_KEY, now, ttl_s=120)
    assert expires_at <= now + timedelta(seconds=120)
    with pytest.raises(ExpiredToken):
        verify_member_code(token, MEMBER_KEY, now + timedelta(seconds=120))


def test_forged_expired_member_code_is_invalid() -> None:
    forged, _ = member_code(5, derive_key("attacker", "x"), NOW)
    with pytest.raises(InvalidToken):
        verify_member_code(forged, MEMBER_KEY, NOW + timedelta(days=1))


def test_member_code_nonce_carries_64_random_bits() -> None:
    nonces = {member_code(5, MEMBER_KEY, NOW)[0].split(".")[3] for _ in range(20)}
    assert len(nonces) == 20
    assert all(len(nonce) >= 11 for nonce in nonces)  # base64url of 8 bytes


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": -1}, "ttl_s"),
        ({"nonce": ""}, "nonce"),
        ({"nonce": "a.b"}, "nonce"),
        ({"nonce": "a!b"}, "nonce"),
        ({"nonce": "x" * 33}, "nonce"),
    ],
)
def test_member_code_issue_arguments_are_checked(arguments: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        member_code(5, MEMBER_KEY, NOW, **arguments)


def test_times_before_the_epoch_are_refused() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="epoch"):
        rotating_token(EVENT, 7, EVENT_KEY, epoch - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="epoch"):
        member_code(5, MEMBER_KEY, epoch - timedelta(seconds=120), ttl_s=120)  # would expire at the epoch itself
    assert rotating_token(EVENT, 7, EVENT_KEY, epoch)[0].startswith("e1.7.0.")


def test_naive_datetimes_rejected() -> None:
    naive = datetime(2025, 6, 1, 12, 0, 5)
    token, _ = rotating_token(EVENT, 7, EVENT_KEY, NOW)
    code, _ = member_code(5, MEMBER_KEY, NOW)
    with pytest.raises(ValueError, match="naive"):
        rotating_token(EVENT, 7, EVENT_KEY, naive)
    with pytest.raises(ValueError, match="naive"):
        verify_rotating(token, EVENT, EVENT_KEY, naive)
    with pytest.raises(ValueError, match="naive"):
        member_code(5, MEMBER_KEY, naive)
    with pytest.raises(ValueError, match="naive"):
        verify_member_code(code, MEMBER_KEY, naive)


# --- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "p1",
        "p1.",
        "x1.1.sig",
        "p2.1.sig",
        "p1.abc.sig",
        "p1.-3.sig",
        "p1.0.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.042.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.1_0.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.\u0661.AAAAAAAAAAAAAAAAAAAAAA",  # Arabic-Indic digit one
        "p1.1.AAAAAAAAAAAAAAAAAAAAAA.extra",
        "p2.1.AAAAAAAAAAAAAAAAAAAAAA",  # well-formed apart from the version
        "p9.1.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.1000000000000000000.AAAAAAAAAAAAAAAAAAAAAA",  # 19 digits: beyond a signed 64-bit column
        "p1.1.AAAAAAAAAAAAAAAAAAAAAAA",  # 23 signature characters
        "e1.1.01.AAAAAAAAAAAAAAAAAAAAAA",  # a window has one spelling
        "e1.1.1x.AAAAAAAAAAAAAAAAAAAAAA",
        "e1.1.1234567890123.AAAAAAAAAAAAAAAAAAAAAA",
        "m1.1.0123.abc.AAAAAAAAAAAAAAAAAAAAAA",
        "m1.1.123..AAAAAAAAAAAAAAAAAAAAAA",  # empty nonce
        "m1.1.123.a!b.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.1.short",
        "p01.1.AAAAAAAAAAAAAAAAAAAAAA",
        "P1.1.AAAAAAAAAAAAAAAAAAAAAA",
        "e1.1.AAAAAAAAAAAAAAAAAAAAAA",
        "m1.1.123.AAAAAAAAAAAAAAAAAAAAAA",
        "p1.1.AAAAAAAAAAAAAAAAAAAAA\u00e9",
        " p1.1.AAAAAAAAAAAAAAAAAAAAAA",
        "p1." + "1" * 300 + ".sig",
        "p1.1." + "A" * 300,
    ],
)
def test_peek_rejects_garbage(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        peek(garbage)


def test_peek_does_not_verify() -> None:
    header = peek("p1.99.AAAAAAAAAAAAAAAAAAAAAA")
    assert header == TokenHeader(kind=POINT, version=1, object_id=99)
    with pytest.raises(InvalidToken):
        verify_static("p1.99.AAAAAAAAAAAAAAAAAAAAAA", POINT, POINT_KEY)


def test_extract_token() -> None:
    token = static_token(POINT, 42, POINT_KEY)
    assert extract_token(token) == token
    assert extract_token(f"  {token}\n") == token
    assert extract_token(f"https://example.cn/q/{token}") == token
    assert extract_token(f" https://example.cn/q/{token}?from=poster#top ") == token
    assert extract_token(f"https://example.cn/app/q/{token}/") == token
    assert extract_token(f"https://example.cn/q/{token}#frag") == token
    assert verify_static(extract_token(f"https://example.cn/q/{token}"), POINT, POINT_KEY) == 42


def test_extract_token_from_the_encoded_url_wechat_hands_a_mini_program() -> None:
    """A poster that opens the mini-program through WeChat's scanner arrives as options.q, percent-encoded; a token
    never holds a %, so the text is decoded once."""
    token = static_token(POINT, 42, POINT_KEY)
    assert extract_token(f"https%3A%2F%2Fexample.cn%2Fq%2F{token}") == token
    assert extract_token(f"https%3a%2f%2fexample.cn%2fq%2F{token}%3Fscancode_time%3D1700000000") == token
    assert extract_token(f"{token}%0A%20") == token  # encoded spaces are spaces too
    with pytest.raises(InvalidToken):
        extract_token("https%3A%2F%2Fexample.cn%2Fother%2Fx")


@pytest.mark.parametrize("scanned", ["", "   ", "https://example.cn/other/x", "https://example.cn/q/", "x" * 5000])
def test_extract_token_rejects(scanned: str) -> None:
    with pytest.raises(InvalidToken):
        extract_token(scanned)


def test_extract_token_length_limit_is_2048() -> None:
    token = static_token(POINT, 42, POINT_KEY)
    prefix = f"https://example.cn/q/{token}?from="
    longest = prefix + "x" * (2048 - len(prefix))
    assert extract_token(f" {longest} ") == token  # counted after stripping
    with pytest.raises(InvalidToken):
        extract_token(longest + "x")


# --- wire format ---------------------------------------------------------------------------------
# Printed posters must keep working across releases: tokens and keys are checked against the layout in
# app/qr/tokens.py's docstring, computed here independently.


def _documented_sig(key: bytes, signed: str) -> str:
    mac = hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def test_key_derivation_is_pinned() -> None:
    message = b"qr-kdf-v1" + b"\x00\x00\x00\x05point" + b"\x00\x00\x00\x13per-point-secret-v1"
    expected = hmac.new(MASTER.encode(), message, hashlib.sha256).digest()
    assert derive_key(MASTER, "point", "per-point-secret-v1") == expected


def test_token_layout_is_pinned() -> None:
    assert static_token(POINT, 42, POINT_KEY) == "p1.42." + _documented_sig(POINT_KEY, "p1.42")
    assert static_token(DEVICE, 9, POINT_KEY) == "d1.9." + _documented_sig(POINT_KEY, "d1.9")
    window = int(NOW.timestamp()) // WINDOW
    event = f"e1.7.{window}"
    assert rotating_token(EVENT, 7, EVENT_KEY, NOW)[0] == f"{event}.{_documented_sig(EVENT_KEY, event)}"
    member = f"m1.5.{int(NOW.timestamp()) + 120}.abc"
    assert member_code(5, MEMBER_KEY, NOW, nonce="abc")[0] == f"{member}.{_documented_sig(MEMBER_KEY, member)}"


def test_a_correctly_signed_token_of_an_unsupported_version_is_invalid() -> None:
    for version in ("0", "2"):
        signed = f"p{version}.42"
        with pytest.raises(InvalidToken, match="version"):
            verify_static(f"{signed}.{_documented_sig(POINT_KEY, signed)}", POINT, POINT_KEY)


# --- fuzzing -----------------------------------------------------------------------------------

_token_like = st.builds(
    lambda prefix, fields: ".".join([prefix, *fields]),
    st.sampled_from(["p1", "d1", "e1", "m1", "p2", "x1", "", "p", "e01"]),
    st.lists(st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=30), max_size=6),
)
_anything = st.one_of(st.text(max_size=400), _token_like)


def _only_qr_errors(fn: Callable[[], object]) -> None:
    # Anything other than a QRError (IndexError, UnicodeError, ...) propagates and fails.
    with contextlib.suppress(QRError):
        fn()


@settings(max_examples=300, deadline=None)
@given(text=_anything)
def test_arbitrary_text_only_raises_qr_errors(text: str) -> None:
    _only_qr_errors(lambda: peek(text))
    _only_qr_errors(lambda: extract_token(text))
    _only_qr_errors(lambda: verify_static(text, POINT, POINT_KEY))
    _only_qr_errors(lambda: verify_static(text, DEVICE, POINT_KEY))
    _only_qr_errors(lambda: verify_rotating(text, EVENT, EVENT_KEY, NOW))
    _only_qr_errors(lambda: verify_member_code(text, MEMBER_KEY, NOW))
    _only_qr_errors(lambda: peek(extract_token(text)))


@settings(max_examples=100, deadline=None)
@given(
    object_id=st.integers(min_value=1, max_value=10**18 - 1),
    offset_s=st.integers(min_value=0, max_value=10**9),
)
def test_round_trip_property(object_id: int, offset_s: int) -> None:
    now = datetime(2001, 1, 1, tzinfo=UTC) + timedelta(seconds=offset_s)
    assert verify_static(static_token(POINT, object_id, POINT_KEY), POINT, POINT_KEY) == object_id
    token, _ = rotating_token(EVENT, object_id, EVENT_KEY, now)
    assert verify_rotating(token, EVENT, EVENT_KEY, now) == object_id
    code, _ = member_code(object_id, MEMBER_KEY, now)
    assert verify_member_code(code, MEMBER_KEY, now) == object_id
    assert peek(code).object_id == object_id


# --- rendering ---------------------------------------------------------------------------------


def test_png_decodes_back_to_poster_url() -> None:
    url = "https://example.cn/q/" + static_token(POINT, 42, POINT_KEY)
    png = to_png(url)
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    results = zxingcpp.read_barcodes(Image.open(BytesIO(png)))
    assert [r.text for r in results] == [url]
    assert results[0].format == zxingcpp.BarcodeFormat.QRCode
    assert results[0].ec_level == "M"


def test_png_member_code_small_box() -> None:
    code, _ = member_code(123456, MEMBER_KEY, NOW)
    results = zxingcpp.read_barcodes(Image.open(BytesIO(to_png(code, box_size=4, border=4))))
    assert [r.text for r in results] == [code]


def test_svg_is_xml_with_svg_root() -> None:
    svg = to_svg("https://example.cn/q/" + static_token(POINT, 42, POINT_KEY))
    root = ET.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.find("{http://www.w3.org/2000/svg}path") is not None


def test_render_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="data"):
        to_png("")
    with pytest.raises(ValueError, match="box_size"):
        to_png("x", box_size=0)
    with pytest.raises(ValueError, match="border"):
        to_svg("x", border=-1)


def test_a_link_that_is_only_the_q_path_still_yields_its_token() -> None:
    """A scanner that hands over the path alone (/q/<token>, the marker at the very start) still gives the token."""
    token = static_token(POINT, 42, derive_key("k" * 32, "point", "s"))
    assert extract_token(f"/q/{token}") == token
