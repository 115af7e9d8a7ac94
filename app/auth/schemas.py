from __future__ import annotations

from marshmallow import fields, validate

from app.common import NewPassword, ResponseSchema, StrictSchema
from app.people.schemas import ResidentSchema, StaffSchema


class WeChatLoginSchema(StrictSchema):
    code = fields.String(required=True, validate=validate.Length(min=1, max=128))


class StaffLoginSchema(StrictSchema):
    username = fields.String(required=True, validate=validate.Length(min=1, max=64))
    password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=128))


class ResidentTokensSchema(ResponseSchema):
    access_token = fields.String()
    refresh_token = fields.String()
    resident = fields.Nested(ResidentSchema)


class StaffTokensSchema(ResponseSchema):
    access_token = fields.String()
    refresh_token = fields.String()
    staff = fields.Nested(StaffSchema)


class AccessTokenSchema(ResponseSchema):
    access_token = fields.String()


class PasswordChangeSchema(StrictSchema):
    current_password = fields.String(required=True, load_only=True, validate=validate.Length(min=1, max=128))
    new_password = NewPassword(required=True)
