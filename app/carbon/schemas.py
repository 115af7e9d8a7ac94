from __future__ import annotations

from datetime import UTC, datetime

from marshmallow import fields, validate

from app.carbon.models import UNITS
from app.common import Boolean, Integer, Number, PageArgsSchema, ResponseSchema, StrictSchema, Text


class RuleSchema(ResponseSchema):
    id = Integer()
    activity = fields.String()
    title = fields.String()
    unit = fields.String(validate=validate.OneOf(UNITS))
    co2e_g_per_unit = Number()
    points = Integer(allow_none=True)
    daily_cap_points = Integer(allow_none=True)
    daily_total_exempt = Boolean()
    version = Integer()
    source = fields.String()
    valid_from = fields.AwareDateTime()
    valid_to = fields.AwareDateTime(allow_none=True)


class RuleQuerySchema(PageArgsSchema):
    prefix = fields.String(load_default=None, validate=validate.Length(max=32))


class RulePublishSchema(StrictSchema):
    activity = fields.String(
        required=True, validate=[validate.Length(min=3, max=64), validate.Regexp(r"^[a-z_]+:[a-z_]+\Z")]
    )
    title = Text(validate=validate.Length(min=1, max=64))  # residents read it where a cap refuses them
    unit = fields.String(validate=validate.OneOf(UNITS))
    co2e_g_per_unit = Number(places=3, validate=validate.Range(min=0, max=10_000_000))
    points = Integer(allow_none=True, validate=validate.Range(min=0, max=10000))
    daily_cap_points = Integer(allow_none=True, validate=validate.Range(min=0, max=100000))
    daily_total_exempt = Boolean()
    source = Text(multiline=True, required=True, validate=validate.Length(min=2, max=500))
    effective_from = fields.AwareDateTime(
        load_default=None,
        validate=validate.Range(
            min=datetime(2000, 1, 1, tzinfo=UTC),
            max=datetime(2100, 1, 1, tzinfo=UTC),
            error="生效时间应在 2000 年到 2100 年之间",
        ),
    )
