"""zh-CN messages for marshmallow's built-in field and validator errors, which residents read.

Applied once at import, before any schema class is defined, because validators format their messages
when they are constructed."""

from __future__ import annotations

import marshmallow
from marshmallow import fields, validate

FIELD_MESSAGES = {
    fields.Field: {"required": "必填项", "null": "不能为空", "validator_failed": "取值无效"},
    fields.String: {"invalid": "必须是字符串", "invalid_utf8": "不是有效的 UTF-8 字符串"},
    fields.Number: {"invalid": "必须是数字", "too_large": "数值过大"},
    fields.Integer: {"invalid": "必须是整数"},
    fields.Float: {"special": "不允许 NaN 或无穷大"},
    fields.Decimal: {"special": "不允许 NaN 或无穷大"},
    fields.Boolean: {"invalid": "必须是布尔值"},
    fields.List: {"invalid": "必须是列表"},
    fields.Nested: {"type": "格式无效"},
    fields.DateTime: {
        "invalid": "不是有效的时间",
        "invalid_awareness": "时间必须带时区（例如 +08:00）",
        "format": "时间格式无效",
    },
    fields.Date: {"invalid": "不是有效的日期（YYYY-MM-DD）", "format": "日期格式无效"},
    fields.Dict: {"invalid": "必须是对象"},
}


def apply() -> None:
    for cls, messages in FIELD_MESSAGES.items():
        cls.default_error_messages = {**cls.default_error_messages, **messages}
    marshmallow.Schema._default_error_messages = {"type": "请求内容必须是 JSON 对象", "unknown": "不支持的字段"}
    validate.Length.message_min = "长度不能少于 {min}"
    validate.Length.message_max = "长度不能超过 {max}"
    validate.Length.message_all = "长度必须在 {min} 到 {max} 之间"
    validate.Length.message_equal = "长度必须为 {equal}"
    validate.Range.message_min = "必须{min_op} {{min}}"
    validate.Range.message_max = "必须{max_op} {{max}}"
    validate.Range.message_all = "必须{min_op} {{min}} 且{max_op} {{max}}"
    validate.Range.message_gte, validate.Range.message_gt = "大于或等于", "大于"
    validate.Range.message_lte, validate.Range.message_lt = "小于或等于", "小于"
    validate.OneOf.default_message = "必须是以下之一：{choices}"
    validate.Regexp.default_message = "格式不正确"
    validate.Equal.default_message = "必须等于 {other}"


apply()
