"""Schemas and helpers shared by every domain package: the error envelope, cursor pages."""

from __future__ import annotations

import base64
import binascii
import decimal
import json
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from marshmallow import fields, validate

import app.i18n  # noqa: F401  (zh-CN validation messages before any schema is defined)
from app import errors
from app.db import MAX_ID, db, fits_key
from app.errors import AppError, field_error

MAX_LIMIT = 100


def _from_text(field: fields.Field) -> bool:
    """Whether the field is read from text (a query string, an admin form), where every value is a string, rather
    than from a JSON body, where a number is a number."""
    return getattr(field.root, "text_input", False)


def _text_ok(field: fields.Field, value: Any) -> bool:
    """A string is a number only in text input, and only in ASCII digits: Python's int() and float() also read "٣"
    and "१", which no client means and no log reader recognises."""
    return not isinstance(value, str) or (_from_text(field) and value.isascii())


class Integer(fields.Integer):
    """A whole number. In a JSON body a JSON number: 2 or 2.0, but not the string "2", which marshmallow would take,
    nor 2.5, which it would silently truncate to 2. In a query string or a form, its digits ("2.0" never was)."""

    def _validated(self, value: Any) -> int:
        if (isinstance(value, float) and not value.is_integer()) or not _text_ok(self, value):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Float(fields.Float):
    """A JSON number in a body (not the string "30.87"); digits in a query string or a form."""

    def _validated(self, value: Any) -> float:
        if not _text_ok(self, value):
            raise self.make_error("invalid", input=value)
        return super()._validated(value)


class Boolean(fields.Boolean):
    """JSON's true or false only. marshmallow's default also takes 0, 1, "yes", "off"… as a guess, and a switch such
    as `active` is not something to guess."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class Number(fields.Decimal):
    """A decimal quantity (an emission factor) written as the JSON number it is: 2500 and 0.5, not 2500.0 or the
    string "2500.000" that a Decimal would become. Read (a JSON number, or its digits as text, which keep a decimal
    exact), with no more decimal places than `places` keeps: marshmallow would round 0.0001 to 0 without a word."""

    def _validated(self, value: Any):
        if isinstance(value, bool) or (isinstance(value, str) and not value.isascii()):
            raise self.make_error("invalid", input=value)
        number = super()._validated(value)
        if self.places is not None and decimal.Decimal(str(value).strip()) != number:  # rounded: 0.0010 is not
            raise ma.ValidationError(f"最多 {-self.places.as_tuple().exponent} 位小数")
        return number

    def _serialize(self, value, attr, obj, **kwargs):
        number = super()._serialize(value, attr, obj, **kwargs)
        if number is None:
            return None
        return int(number) if number == number.to_integral_value() else float(number)


# Bidirectional overrides and isolates reorder what follows them on screen ("a\u202eb" shows b before a): in a
# nickname or a name they disguise what staff read in lists, and nothing typed by hand needs them.
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_LINE_BREAKS = frozenset("\t\n\r")
_INVISIBLE = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})  # format (zero-width), control and space characters


class Text(fields.String):
    """Text a person typed (a name, a reason): surrounding spaces are dropped before the length is checked, so a
    name of only spaces is as empty as no name, and lists do not show a blank row. Control characters and
    bidirectional controls are refused; `multiline` text (a reason, a source) may hold tabs and line breaks."""

    def __init__(self, *, multiline: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.multiline = multiline

    def _deserialize(self, value, attr, data, **kwargs) -> str:
        text = super()._deserialize(value, attr, data, **kwargs).strip()
        allowed = _LINE_BREAKS if self.multiline else frozenset()
        if any((unicodedata.category(char) == "Cc" and char not in allowed) or char in _BIDI_CONTROLS for char in text):
            raise ma.ValidationError("不能包含控制字符或文字方向控制符")
        if not any(unicodedata.category(char) not in _INVISIBLE for char in text):
            text = ""  # only zero-width and space characters: shows as a blank, so it counts as empty
        if not text and any(isinstance(v, validate.Length) and (v.min or 0) > 0 for v in self.validators):
            # Blank is not a length to fix: a required field says so as if left out, an optional one that it is empty.
            raise self.make_error("required" if self.required else "null")
        return text


class Id(Integer):
    """An id in a request: a whole number from 1 to MAX_ID (a bigger one would overflow the database)."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("validate", validate.Range(min=1, max=MAX_ID))
        super().__init__(**kwargs)


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ma.ValidationError("密码不能只由空格组成")


class NewPassword(fields.String):
    """A password being set: 8 to 128 characters, kept as typed (spaces count), but not spaces alone."""

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("load_only", True)
        kwargs.setdefault("validate", [validate.Length(min=8, max=128), _not_blank])
        super().__init__(**kwargs)


class StrictSchema(ma.Schema):
    """Unknown fields are errors, never silently dropped."""

    class Meta:
        unknown = ma.RAISE


class ResponseSchema(StrictSchema):
    """An answer's shape. Every field is in every answer (null where it allows null), so the OpenAPI document marks
    each one required and a client's generated types need no check for absence. A field that an answer may leave
    out says so with metadata={"optional": True}. Dumping is unchanged: the suite checks every answer it receives
    against the document (tests.conftest.assert_documented)."""

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        if not field_obj.load_only and not field_obj.metadata.get("optional"):
            field_obj.required = True


def _error_codes() -> list[str]:
    """Every code an error answer can carry: the domain's errors and the HTTP layer's refusals."""
    domain = {value.code for value in vars(errors).values() if isinstance(value, type) and issubclass(value, AppError)}
    return sorted(domain | {code for code, _ in errors.HTTP_CODES.values()})


def _about(text: str, **more: Any) -> dict[str, Any]:
    return {"description": text, **more}


_CAP_POINTS = "cap_reached: the points this request would have added to it"


class _CapCounterFields(ma.Schema):
    """A daily counter that refused a request (cap_reached)."""

    activity = fields.String(
        metadata=_about("cap_reached: the refused counter, an activity (sorting:paper) or daily:total")
    )
    cap = fields.Integer(metadata=_about("cap_reached: its daily cap, in points"))
    used = fields.Integer(metadata=_about("cap_reached: the points it has counted today"))
    remaining = fields.Integer(metadata=_about("cap_reached: the points it still has room for today"))
    points = fields.Integer(metadata=_about(_CAP_POINTS))


class CapCounterSchema(_CapCounterFields, ResponseSchema):
    """One refused counter in `details.counters`."""


class ErrorDetailsSchema(_CapCounterFields, StrictSchema):
    """More about a refusal, by its code; {} when there is nothing more. Each property comes only with the codes its
    description names, so none is required; a later version may add details, which a client should ignore. A
    cap_reached refusal describes its first refused counter at the top, as before `counters` listed them all."""

    validation_fields = fields.Dict(
        keys=fields.String(),
        values=fields.Raw(),
        data_key="fields",
        metadata=_about(
            "validation_error: each field's messages (a list's or a nested body's errors nested by index and name)",
            example={"items": {"0": {"weight_g": ["重量必须在 1 克到 200 千克之间"]}}},
        ),
    )
    distance_m = fields.Integer(
        metadata=_about("too_far: how far from the point the scan was made, in metres, rounded up")
    )
    geofence_m = fields.Integer(metadata=_about("too_far: how near the point a scan must be, in metres"))
    points = fields.Integer(metadata=_about(f"{_CAP_POINTS}; duplicate (with deposit_id): the points it credited"))
    counters = fields.List(
        fields.Nested(CapCounterSchema),
        metadata=_about("cap_reached: every refused daily counter with its own figures, the first one first"),
    )
    refused = fields.Raw(
        metadata=_about(
            "cap_reached: every refused counter; duplicate (a smart bin's replayed request): true if its first try "
            "was refused, so the bin signs it again, false if it was recorded",
            oneOf=[{"type": "boolean"}, {"type": "array", "items": {"type": "string"}}],
        )
    )
    balance = fields.Integer(metadata=_about("insufficient_points: the balance now"))
    required = fields.Integer(metadata=_about("insufficient_points: the points the request needs"))
    deposit_id = fields.Integer(
        metadata=_about(
            "duplicate (a member code already paid for a deposit, or a smart bin's replayed request that was "
            "recorded): that deposit"
        )
    )
    collection_point_id = fields.Integer(
        metadata=_about(
            "duplicate (a point's name its community already has): that point, to open or bring back; (a smart bin's "
            "code registered already): the point of that bin"
        )
    )
    device_id = fields.Integer(
        metadata=_about("duplicate (a smart bin's code registered already): that bin, to re-key if its secret is lost")
    )
    reason = fields.String(
        metadata=_about(
            "unauthorized, to a smart bin: what it should fix, one of bad_headers, unknown_device, stale_timestamp, "
            "device_retired, bad_signature; invalid_qr of a scan: not_a_poster, member_code (the resident's own code, "
            "to show a collector), poster_replaced, point_retired (offer the nearby points); validation_error of a "
            "scan: location_required, at a point with a geofence "
            "when the scan gave no position (ask for it: wx.getLocation); any refusal the HTTP server writes before "
            "the app reads the request (app/serving.py: bad_request, uri_too_long, headers_too_large and others): its "
            "own diagnosis, in English"
        )
    )
    headers = fields.List(
        fields.String(), metadata=_about("unauthorized, to a smart bin (bad_headers): the signature headers at fault")
    )
    server_time = fields.Integer(
        metadata=_about(
            "unauthorized, to a smart bin (stale_timestamp, or bad_headers naming X-Timestamp): the server's clock, in "
            "Unix seconds"
        )
    )
    string_to_sign = fields.String(
        metadata=_about(
            "unauthorized, to a smart bin (bad_signature): what the server signed, METHOD, PATH, TIMESTAMP and the "
            "body's SHA-256 in lower-case hex, one per line, to compare with what the bin signed"
        )
    )
    year = fields.Integer(metadata=_about("invalid_state (reversing a credit): the year whose points have expired"))
    http_status = fields.Integer(metadata=_about("upstream_error, upstream_unavailable: WeChat's HTTP status"))
    errcode = fields.Integer(metadata=_about("a WeChat login that WeChat refused: its error code"))
    request_id = fields.String(metadata=_about("internal_error, service_unavailable: the X-Request-Id, to report"))
    database_revision = fields.String(
        allow_none=True, metadata=_about("not_ready (/readyz): the schema's migration, null before any")
    )
    code_revision = fields.String(metadata=_about("not_ready (/readyz): the migration this code expects"))


class ErrorBodySchema(ResponseSchema):
    code = fields.String(
        validate=validate.OneOf(_error_codes()),
        metadata={
            "example": "validation_error",
            "description": "stable, for programs; a later version may add codes, which a client should handle as the "
            "status's general case",
        },
    )
    message = fields.String(metadata={"example": "提交的内容有误"})
    details = fields.Nested(ErrorDetailsSchema)
    request_id = fields.String(
        metadata={
            "example": "5f2c0d9a8b7e4c1d",
            "description": "this request's X-Request-Id (a replayed refusal, Idempotent-Replayed: true, keeps the "
            "first request's, whose log line says why): shown with the message, it lets support find the refusal in "
            "the logs",
        }
    )


class ErrorEnvelopeSchema(ResponseSchema):
    error = fields.Nested(ErrorBodySchema)


class PageArgsSchema(ma.Schema):
    text_input = True  # a query string
    cursor = fields.String(load_default=None)
    limit = Integer(load_default=20, validate=validate.Range(min=1, max=MAX_LIMIT))


def page_schema(item_schema: type[ma.Schema], name: str) -> type[ma.Schema]:
    return ma.Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item_schema), required=True),
            "next": fields.String(allow_none=True, required=True),
        },
        name=name,
    )


def encode_cursor(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR = 256  # the cursors handed out are a few ids or a name; anything longer was not one of them


def decode_cursor(cursor: str | None) -> Any:
    if not cursor:  # `?cursor=` from a client that fills in a null `next`: the first page
        return None
    try:
        if len(cursor) > MAX_CURSOR:
            raise ValueError("cursor too long")
        padded = cursor + "=" * (-len(cursor) % 4)
        return json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise field_error("cursor", "分页游标无效") from exc


def keyset_page(stmt: sa.Select, key: sa.ColumnElement, cursor: str | None, limit: int, *, desc: bool = True):
    """One page ordered by a unique integer key, without OFFSET: cost does not grow with depth."""
    after = decode_cursor(cursor)
    if after is not None:
        if not fits_key(after, key.type):
            raise field_error("cursor", "分页游标无效")
        stmt = stmt.where(key < after if desc else key > after)
    stmt = stmt.order_by(key.desc() if desc else key.asc()).limit(limit + 1)
    rows = list(db.session.scalars(stmt))
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(getattr(rows[-1], key.key))
    return {"items": rows, "next": next_cursor}


def _is_name(cursor: Any) -> bool:
    return type(cursor) is str


def _is_numbers(cursor: Any) -> bool:
    return type(cursor) is list and bool(cursor) and all(type(v) is int for v in cursor)


def _memory_page(items: list, key: Callable[[Any], Any], cursor: str | None, limit: int, fits: Callable[[Any], bool]):
    """One page of a short list sorted in memory by `key`, unique to each item; the cursor is the last key seen, so
    an item that appears or goes between two pages shifts nothing. `fits` says whether a decoded cursor has the
    key's shape: a cursor of another list is refused rather than read as something else."""
    after = None if cursor is None else decode_cursor(cursor)
    if after is not None and not fits(after):
        raise field_error("cursor", "分页游标无效")
    rest = [item for item in items if after is None or key(item) > after]
    page = rest[:limit]
    return {"items": page, "next": encode_cursor(key(page[-1])) if len(rest) > limit else None}


def list_page(
    items: list, key: Callable[[Any], list[int]], cursor: str | None, limit: int, prefix: Sequence[int] = ()
) -> dict[str, Any]:
    """Keyed by whole numbers (points by distance, then id), after a `prefix` the query fixes (where the distances
    are measured from): a cursor carries it, and one of a query with another prefix is refused."""
    prefix = list(prefix)
    fits = lambda after: _is_numbers(after) and after[: len(prefix)] == prefix  # noqa: E731
    return _memory_page(items, lambda item: prefix + key(item), cursor, limit, fits)


def named_page(items: list, name: Callable[[Any], str], cursor: str | None, limit: int) -> dict[str, Any]:
    """Keyed by a unique name (the rules in force, by activity)."""
    return _memory_page(items, name, cursor, limit, _is_name)
