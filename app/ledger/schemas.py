from __future__ import annotations

from marshmallow import fields, validate

from app.common import StrictSchema


class EntrySchema(StrictSchema):
    id = fields.Integer()
    seq = fields.Integer()
    delta = fields.Integer()
    balance_after = fields.Integer()
    kind = fields.String()
    source = fields.String()
    activity = fields.String(allow_none=True)
    rule_id = fields.Integer(allow_none=True)
    co2e_g = fields.Integer()
    ref_type = fields.String()
    ref_id = fields.String()
    memo = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()


class AdjustmentSchema(StrictSchema):
    delta = fields.Integer(required=True, validate=validate.Range(min=-100000, max=100000))
    reason = fields.String(required=True, validate=validate.Length(min=2, max=200))


class ReversalSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=2, max=200))
