from __future__ import annotations

from marshmallow import fields, validate

from app.common import Boolean, Id, Integer, NewPassword, PageArgsSchema, ResponseSchema, StrictSchema, Text
from app.people.models import ORG_KINDS, RESIDENT_STATUSES, STAFF_ROLES

NAME = validate.Length(min=1, max=64)
CODE_CHARACTERS = validate.Regexp(r"^[A-Za-z0-9_-]+\Z", error="只能包含英文字母、数字和 _ -，如 hengkang")
USERNAME_CHARACTERS = validate.Regexp(r"^[A-Za-z0-9_.@-]+\Z", error="只能包含英文字母、数字和 _ . @ -，如 worker.hk")


class CommunityCreateSchema(StrictSchema):
    code = fields.String(required=True, validate=[validate.Length(min=1, max=32), CODE_CHARACTERS])
    name = Text(required=True, validate=NAME)


class CommunitySchema(ResponseSchema):
    id = Integer()
    code = fields.String()
    name = fields.String()


class OrganizationCreateSchema(StrictSchema):
    name = Text(required=True, validate=validate.Length(min=1, max=128))
    kind = fields.String(required=True, validate=validate.OneOf(ORG_KINDS))
    community_id = Id(load_default=None, allow_none=True)


class OrganizationSchema(ResponseSchema):
    id = Integer()
    name = fields.String()
    kind = fields.String(validate=validate.OneOf(ORG_KINDS))
    community_id = Integer(allow_none=True)


class OrganizationQuerySchema(PageArgsSchema):
    community_id = Id(load_default=None)
    kind = fields.String(load_default=None, validate=validate.OneOf(ORG_KINDS))


class StaffCreateSchema(StrictSchema):
    username = fields.String(required=True, validate=[validate.Length(min=3, max=64), USERNAME_CHARACTERS])
    password = NewPassword(required=True)
    role = fields.String(required=True, validate=validate.OneOf(STAFF_ROLES))
    display_name = Text(load_default="", validate=validate.Length(max=64))
    community_id = Id(load_default=None, allow_none=True)
    organization_id = Id(load_default=None, allow_none=True)
    store_ids = fields.List(Id(), load_default=list, validate=validate.Length(max=50))
    collection_point_ids = fields.List(Id(), load_default=list, validate=validate.Length(max=50))


class StaffUpdateSchema(StrictSchema):
    display_name = Text(validate=validate.Length(max=64))
    password = NewPassword()
    active = Boolean()
    store_ids = fields.List(Id(), validate=validate.Length(max=50))
    collection_point_ids = fields.List(Id(), validate=validate.Length(max=50))


class PointRefSchema(ResponseSchema):
    id = Integer()
    name = fields.String()
    active = Boolean(metadata={"description": "false: retired, no deposits are recorded there"})


class StaffSchema(ResponseSchema):
    id = Integer()
    username = fields.String()
    display_name = fields.String()
    role = fields.String(validate=validate.OneOf(STAFF_ROLES))
    community_id = Integer(allow_none=True)
    organization_id = Integer(allow_none=True)
    store_ids = fields.List(Integer())
    collection_point_ids = fields.List(Integer())
    collection_points = fields.List(
        fields.Nested(PointRefSchema),
        attribute="collection_points_by_id",
        metadata={"description": "a collector's points by name, the retired ones marked: what its app lists"},
    )
    active = Boolean()
    created_at = fields.AwareDateTime()


class MeSchema(ResponseSchema):
    id = Integer()
    nickname = fields.String()
    community_id = Integer(allow_none=True)
    status = fields.String(
        metadata={
            "description": "as in the login's resident; always active here, since a frozen resident's requests are "
            "refused with 403 account_frozen"
        }
    )
    created_at = fields.AwareDateTime()
    balance = Integer()
    co2e_g = Integer(
        metadata={
            "description": "grams of CO2e the resident's earnings stand for, less those reversed (the sum of the "
            "ledger's co2e_g); a deposit worth 0 points adds none"
        }
    )
    lifetime_earned = Integer(
        metadata={
            "description": "points earned in all (entries of kind earn), less earnings reversed; adjustments, spends "
            "and expiry do not count, so it is not the balance"
        }
    )
    expiring_points = Integer(
        metadata={
            "description": "the points that expire next: what is left of the oldest year's points (points earned "
            "in local year Y expire when year Y + 1 + POINTS_EXPIRY_YEARS begins: Y + 2 by default); 0 when none will"
        }
    )
    expiring_at = fields.AwareDateTime(
        allow_none=True,
        metadata={
            "description": "when expiring_points expire: a local midnight (Asia/Shanghai) on 1 January, as a UTC "
            "instant (2027-12-31T16:00:00+00:00 is 2028-01-01 00:00 in Shanghai); null when none will"
        },
    )
    expiring_on = fields.Date(
        allow_none=True,
        metadata={
            "description": "the last local day expiring_points can be spent, to show as '2027-12-31 到期'; null when "
            "none will"
        },
    )


class MeUpdateSchema(StrictSchema):
    nickname = Text(validate=validate.Length(min=1, max=32))
    community_id = Id(allow_none=True)


class ResidentSchema(ResponseSchema):
    id = Integer()
    nickname = fields.String()
    community_id = Integer(allow_none=True)
    status = fields.String(validate=validate.OneOf(RESIDENT_STATUSES))
    created_at = fields.AwareDateTime()


class ResidentUpdateSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf([s for s in RESIDENT_STATUSES if s != "closed"]))
    reason = Text(multiline=True, required=True, validate=validate.Length(min=2, max=200))


class ResidentQuerySchema(PageArgsSchema):
    community_id = Id(load_default=None)
    status = fields.String(load_default=None, validate=validate.OneOf(RESIDENT_STATUSES))
    q = Text(
        load_default=None,
        validate=validate.Length(min=1, max=32),
        metadata={"description": "昵称中包含的文字，或居民 ID"},
    )
