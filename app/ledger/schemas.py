from __future__ import annotations

from marshmallow import fields, validate

from app.common import Integer, ResponseSchema, StrictSchema, Text
from app.ledger.models import KINDS


class EntrySchema(ResponseSchema):
    id = Integer()
    seq = Integer()
    delta = Integer()
    balance_after = Integer()
    kind = fields.String(validate=validate.OneOf(KINDS))
    source = fields.String(
        metadata={
            "description": "where the points came from: checkin, sorting (a deposit), admin (an adjustment), expiry; "
            "later versions add more (events, trade-ins, the green exchange)"
        }
    )
    activity = fields.String(allow_none=True)
    rule_id = Integer(allow_none=True)
    co2e_g = Integer()
    ref_type = fields.String()
    ref_id = fields.String()
    memo = fields.String(allow_none=True)
    created_at = fields.AwareDateTime()


class AdjustmentSchema(StrictSchema):
    delta = Integer(required=True, validate=validate.Range(min=-100000, max=100000))
    reason = Text(multiline=True, required=True, validate=validate.Length(min=2, max=200))


class ReversalSchema(StrictSchema):
    reason = Text(multiline=True, required=True, validate=validate.Length(min=2, max=200))
