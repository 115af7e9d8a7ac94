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
    activity = fields.String(
        allow_none=True,
        metadata={
            "description": "the methodology activity that priced it (GET /rules): checkin:sorting, sorting:<category> "
            "for a deposit of one category, sorting for a deposit of several; a reversal keeps its entry's; null "
            "for adjustments and expiry"
        },
    )
    rule_id = Integer(
        allow_none=True,
        metadata={
            "description": "the rule version that priced it; null for a deposit of several categories (each of its "
            "items names its own) and where no rule applies"
        },
    )
    co2e_g = Integer()
    ref_type = fields.String(
        metadata={
            "description": "what the entry refers to, ref_id being its id: checkin; deposit (GET /me/deposits lists "
            "them); adjustment (an admin's, by its reference); entry (a reversal: the entry it undoes); expiry (the "
            "local year whose points expired). Later versions add more (redemptions, events, trade-ins)"
        }
    )
    ref_id = fields.String(
        metadata={"description": 'the id of what ref_type names, always as text: deposit 12 is "12"'}
    )
    memo = fields.String(
        attribute="note",
        allow_none=True,
        metadata={"description": "what the entry is for: the system's words, then an admin's reason after a colon"},
    )
    created_at = fields.AwareDateTime()


class AdjustmentSchema(StrictSchema):
    delta = Integer(required=True, validate=validate.Range(min=-100000, max=100000))
    reason = Text(multiline=True, required=True, validate=validate.Length(min=2, max=200))


class ReversalSchema(StrictSchema):
    reason = Text(multiline=True, required=True, validate=validate.Length(min=2, max=200))


class DailyCapSchema(ResponseSchema):
    activity = fields.String(metadata={"description": "the counter: an activity of GET /rules, or daily:total"})
    title = fields.String(
        metadata={"description": "its name, as cap_reached messages give it (分类打卡, 废纸, 全部活动合计…)"}
    )
    cap = Integer(metadata={"description": "the most points it counts in a local day"})
    used = Integer(metadata={"description": "the points it has counted today"})
    remaining = Integer(metadata={"description": "the points it still takes today: cap - used, never below 0"})


class DailyCapsSchema(ResponseSchema):
    day = fields.Date(metadata={"description": "the local day (Shanghai) counted; counters start again at midnight"})
    items = fields.List(
        fields.Nested(DailyCapSchema),
        metadata={
            "description": "every activity in force with a daily cap, daily:total first (the total of all activities "
            "but those whose rule is daily_total_exempt)"
        },
    )
