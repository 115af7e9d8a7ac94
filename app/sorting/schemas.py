from __future__ import annotations

from datetime import date
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from app.common import Boolean, Float, Id, Integer, PageArgsSchema, ResponseSchema, StrictSchema, Text
from app.sorting.models import CATEGORIES, CATEGORY_NAMES, POINT_KIND_NAMES

MAX_LINE_G = 200_000
CHECKIN_DAY = "the local day (Shanghai) the check-in counts for"
EXPIRES_IN = "seconds until it expires, counted from this answer"
MAX_LINES = 20
# Positions are compared as given, so both sides must use one datum. In China that is GCJ-02, the datum of the
# map pickers (wx.chooseLocation, Tencent and Amap maps); WGS-84 positions lie about 500 m off in Shanghai.
DATUM = "GCJ-02 (wx.getLocation({type: 'gcj02'}), wx.chooseLocation, Tencent and Amap maps), as every position here"


def _one_of(names: dict[str, str]) -> validate.OneOf:
    """One of the codes, refused with the name staff know each by: a collector's app shows the message as it is."""
    labels = [f"{code}（{name}）" for code, name in names.items()]
    one_of = validate.OneOf(list(names), labels=labels, error="必须是以下之一：{labels}")
    one_of.labels_text = "、".join(labels)  # marshmallow's ", " inside a Chinese sentence
    return one_of


def _distinct(categories: list[str]) -> None:
    if len(set(categories)) != len(categories):
        raise ValidationError("品类不能重复")


def _categories(**kwargs) -> fields.List:
    """A point's categories, each one of CATEGORIES and none twice."""
    return fields.List(fields.String(validate=_one_of(CATEGORY_NAMES)), metadata={"uniqueItems": True}, **kwargs)


_CATEGORY_LIST = [
    validate.Length(min=1, error="请至少选择一个回收品类"),
    validate.Length(max=len(CATEGORIES)),
    _distinct,
]


def _latitude(whose: str = "", note: str = "with lng, or neither", **kwargs) -> Float:
    description = f"{whose}latitude in {DATUM}; {note}"
    return Float(allow_none=True, validate=validate.Range(min=-90, max=90), metadata={"description": description},
                 **kwargs)  # fmt: skip


def _longitude(whose: str = "", **kwargs) -> Float:
    description = f"{whose}longitude in {DATUM}"
    return Float(allow_none=True, validate=validate.Range(min=-180, max=180), metadata={"description": description},
                 **kwargs)  # fmt: skip


def _whole_position(data: dict) -> None:
    if (data.get("lat") is None) != (data.get("lng") is None):
        raise ValidationError("纬度和经度必须同时提供", "lat")


class CollectionPointCreateSchema(StrictSchema):
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    community_id = Id(required=True)
    kind = fields.String(required=True, validate=_one_of(POINT_KIND_NAMES))
    address = Text(load_default="", validate=validate.Length(max=256))
    lat = _latitude(load_default=None)
    lng = _longitude(load_default=None)
    geofence_m = Integer(load_default=None, allow_none=True, validate=validate.Range(min=10, max=5000))
    categories = _categories(load_default=lambda: list(CATEGORIES), validate=_CATEGORY_LIST)

    @validates_schema
    def _position_pairs(self, data, **kwargs):
        _whole_position(data)
        if data.get("geofence_m") is not None and data.get("lat") is None:
            raise ValidationError("设置电子围栏需要先提供回收点位置", "geofence_m")


class CollectionPointUpdateSchema(CollectionPointCreateSchema):
    class Meta:
        partial = True

    name = Text(validate=validate.Length(min=1, max=128))
    community_id = Id()
    kind = fields.String(validate=_one_of(POINT_KIND_NAMES))
    address = Text(validate=validate.Length(max=256))
    lat = _latitude()
    lng = _longitude()
    geofence_m = Integer(allow_none=True, validate=validate.Range(min=10, max=5000))
    categories = _categories(validate=_CATEGORY_LIST)
    active = Boolean()

    @validates_schema
    def _position_pairs(self, data, **kwargs):
        """Replaces the create schema's check: a change gives both coordinates, and the service checks the point as
        the change leaves it (a fence needs a position it may already have)."""
        if ("lat" in data) != ("lng" in data):
            raise ValidationError("纬度和经度必须同时修改", "lat")


class CollectionPointSchema(ResponseSchema):
    id = Integer()
    name = fields.String()
    community_id = Integer()
    kind = fields.String(validate=_one_of(POINT_KIND_NAMES))
    address = fields.String()
    lat = Float(allow_none=True, metadata={"description": f"latitude in {DATUM}; null when the point has no position"})
    lng = Float(allow_none=True, metadata={"description": f"longitude in {DATUM}"})
    geofence_m = Integer(allow_none=True, metadata={"description": "scans must be within this many metres; null: none"})
    categories = _categories()
    active = Boolean()
    distance_m = Integer(
        allow_none=True, dump_default=None, metadata={"description": "metres from ?near=; null without it"}
    )


class PointQuerySchema(PageArgsSchema):
    community_id = Id(load_default=None)
    kind = fields.String(load_default=None, validate=_one_of(POINT_KIND_NAMES))
    category = fields.String(
        load_default=None, validate=_one_of(CATEGORY_NAMES), metadata={"description": "只列出收这一品类的回收点"}
    )
    near = fields.String(
        load_default=None,
        validate=validate.Regexp(  # ASCII digits, not \d's; spaces around the comma, as strings are often joined
            r"^-?[0-9]{1,3}(\.[0-9]+)? *, *-?[0-9]{1,3}(\.[0-9]+)?\Z",
            error="应为“纬度,经度”，如 30.8706,121.5853（GCJ-02 坐标）",
        ),
        metadata={
            "description": f"lat,lng in {DATUM} (lat -90 to 90, lng -180 to 180): the nearest first. A page's "
            "cursor belongs to its near: another position starts again from the first page (422 on the cursor)"
        },
    )
    active = fields.Boolean(
        load_default=True,
        truthy={"true"},
        falsy={"false"},
        metadata={"description": "false 只列出已停用的回收点（以便查到并重新启用）；默认只列在用的"},
    )


def _one_day(of_what: str) -> fields.Date:
    return fields.Date(
        "%Y-%m-%d",
        load_default=None,
        validate=validate.Range(min=date(2000, 1, 1), max=date(2099, 12, 31)),
        metadata={"description": f"只看这一天（上海时间）的{of_what}，YYYY-MM-DD"},
    )


class DepositQuerySchema(PageArgsSchema):
    day = _one_day("投递")


class CheckinQuerySchema(PageArgsSchema):
    day = _one_day("打卡")


class PosterSchema(ResponseSchema):
    token = fields.String()
    url = fields.String()


class MemberCodeSchema(ResponseSchema):
    token = fields.String(
        metadata={
            "description": "draw it as a QR code as it is (or show /me/member-code.png); the collector's app sends "
            "what it scans as member_code"
        }
    )
    expires_at = fields.AwareDateTime()
    expires_in = Integer(
        metadata={"description": f"{EXPIRES_IN}: refresh a little before, whatever the phone's clock says"}
    )


class ScanSchema(StrictSchema):
    token = fields.String(
        required=True,
        validate=validate.Length(min=1, max=512),
        metadata={
            "description": "what the poster's QR holds, as scanned: the URL {PUBLIC_BASE_URL}/q/<token> (as "
            "wx.scanCode reads it, or percent-encoded, as a page opened from WeChat's scanner gets it in options.q), "
            "or the bare token"
        },
    )
    lat = _latitude(
        "the resident's ",
        "with lng; required at a point with a geofence (422); read to answer the fence, not kept",
        load_default=None,
    )
    lng = _longitude("the resident's ", load_default=None)

    @validates_schema
    def _position_pairs(self, data, **kwargs):
        _whole_position(data)


def _point_name(**metadata: Any) -> fields.String:
    return fields.String(metadata={"description": "the collection point's name, as it is now", **metadata})


class ScanResultSchema(ResponseSchema):
    kind = fields.String(
        validate=validate.OneOf(["checkin"]),
        metadata={"description": "checkin: a collection point's poster", "example": "checkin"},
    )
    points = Integer()
    co2e_g = Integer()
    balance = Integer()
    entry_id = Integer(
        allow_none=True,
        metadata={"description": "the ledger entry; null when the check-in rule gives 0 points"},
    )
    collection_point_id = Integer(
        metadata={"optional": True, "description": "the point checked in at: always there when kind is checkin"}
    )
    collection_point_name = _point_name(optional=True)
    day = fields.Date(metadata={"optional": True, "description": CHECKIN_DAY})


class CheckinSchema(ResponseSchema):
    """Who checked in at a point, and when; not where they stood (a scan's position answers the geofence and is not
    kept)."""

    id = Integer()
    resident_id = Integer()
    collection_point_id = Integer()
    collection_point_name = _point_name()
    day = fields.Date(metadata={"description": CHECKIN_DAY})
    created_at = fields.AwareDateTime()


class MemberCodeImageQuerySchema(Schema):
    token = fields.String(
        validate=validate.Length(min=1, max=256),
        metadata={"description": "a code of one's own from GET /me/member-code, still valid: the image draws it"},
    )


class DepositLineSchema(StrictSchema):
    category = fields.String(required=True, validate=_one_of(CATEGORY_NAMES))
    weight_g = Integer(
        required=True,
        strict=True,
        validate=validate.Range(min=1, max=MAX_LINE_G, error=f"重量必须在 1 克到 {MAX_LINE_G // 1000} 千克之间"),
        error_messages={"invalid": "重量以克为单位，须为整数（1.5 千克填 1500）"},  # 1.5 was meant as kilograms
    )


class DepositCreateSchema(StrictSchema):
    member_code = fields.String(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "what the member code QR holds, as scanned (the token of GET /me/member-code)"},
    )
    collection_point_id = Id(required=True)
    items = fields.List(
        fields.Nested(DepositLineSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_LINES, error=f"每次投递 1 到 {MAX_LINES} 行"),
    )
    fit_to_caps = Boolean(
        load_default=False,
        metadata={
            "description": "超出每日积分上限时：false（默认）整笔不记录，答 409 cap_reached；true 照实记录整笔投递"
            "（重量与减排量不变），积分只记上限内还能得的部分，各行按顺序先到先得，超出部分不计积分"
            "（见 points_over_cap）。回收员在 cap_reached 后选择「按上限记录」时用，同一会员码仍可使用，"
            "但须换一个新的 Idempotency-Key（请求内容变了）。一分也记不上时不生成积分记录，这笔减排量也就不计入"
            "居民 /me 的 co2e_g（与不足 1 分的投递相同），但照实保存在这笔投递上"
        },
    )


_LINE_SHARE = (
    "：整笔投递按各行精确值合计后只四舍五入一次，再按最大余数法分到各行，各行之和等于整笔；"
    "因此单看一行，可能与该行单独四舍五入相差 1"
)


class DepositItemSchema(ResponseSchema):
    category = fields.String(validate=_one_of(CATEGORY_NAMES))
    weight_g = Integer()
    co2e_g = Integer(metadata={"description": "本行分得的减排量（克）" + _LINE_SHARE})
    points = Integer(
        metadata={"description": "本行分得的积分" + _LINE_SHARE + "；按上限记录（fit_to_caps）时为本行实得的积分"}
    )
    rule_id = Integer()


class DepositSchema(ResponseSchema):
    id = Integer()
    resident_id = Integer()
    collection_point_id = Integer()
    collection_point_name = _point_name()
    collector_id = Integer(allow_none=True, metadata={"description": "the collector who weighed it; null for a bin"})
    device_id = Integer(allow_none=True, metadata={"description": "the smart bin that sent it; null for a collector"})
    points = Integer(
        metadata={
            "description": "the points credited: the exact grams (the sum of weight × factor over the lines) "
            "converted to points, rounded half up once, less points_over_cap; not co2e_g / 100, which is rounded "
            "first (3649.5 g: co2e_g 3650, points 36)"
        },
    )
    co2e_g = Integer(
        metadata={
            "description": "the deposit's CO2e in grams, as weighed: the exact grams rounded half up once; the "
            "resident's /me co2e_g counts what the ledger credits, so a deposit worth 0 points (entry_id null) is "
            "recorded here but not added there"
        },
    )
    points_over_cap = Integer(
        metadata={
            "description": "the points the daily caps left uncredited, for a deposit recorded whole with "
            "fit_to_caps; points + points_over_cap is what the load was worth. 0 otherwise"
        },
    )
    weight_g = Integer()
    entry_id = Integer(allow_none=True, metadata={"description": "the ledger entry; null for a deposit worth 0 points"})
    reversal_entry_id = Integer(
        allow_none=True,
        metadata={
            "description": "the entry that reversed this deposit's credit (its points were taken back); else null"
        },
    )
    corrects_id = Integer(
        allow_none=True,
        metadata={"description": "the deposit an admin corrected by recording this one in its place; else null"},
    )
    corrected_by_id = Integer(
        allow_none=True,
        metadata={
            "description": "the deposit that corrected this one (its credit was reversed and the right items recorded "
            "there); else null"
        },
    )
    items = fields.List(fields.Nested(DepositItemSchema))
    created_at = fields.AwareDateTime()


class DepositCorrectionSchema(StrictSchema):
    items = fields.List(
        fields.Nested(DepositLineSchema),
        required=True,
        validate=validate.Length(min=1, max=MAX_LINES, error=f"每次投递 1 到 {MAX_LINES} 行"),
        metadata={"description": "the items as they should have been recorded, whole (not a difference)"},
    )
    reason = Text(
        multiline=True,
        required=True,
        validate=validate.Length(min=2, max=200),
        metadata={"description": "why, kept with the correction; the resident reads it on the reversal"},
    )
    fit_to_caps = Boolean(load_default=False, metadata={"description": "as for POST /deposits"})


class DeviceCreateSchema(StrictSchema):
    code = fields.String(
        required=True,
        validate=[
            validate.Length(min=3, max=64),
            validate.Regexp(r"^[A-Za-z0-9_.-]+\Z", error="只能包含英文字母、数字和 _ . -，如 HK-BIN-02"),
        ],
    )
    collection_point_id = Id(required=True)


class DeviceUpdateSchema(StrictSchema):
    active = Boolean(required=True, metadata={"description": "false 停用（设备请求将被拒绝），true 重新启用"})


class DeviceSchema(ResponseSchema):
    id = Integer()
    code = fields.String()
    collection_point_id = Integer()
    active = Boolean()
    created_at = fields.AwareDateTime()


class DeviceWithSecretSchema(DeviceSchema):
    secret = fields.String(metadata={"description": "只在登记或更换密钥时返回一次，用于 HMAC 签名"})
