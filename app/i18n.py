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


# Field names as a person knows them: an API refusal's message and the admin site's forms name the field at fault so.
FIELD_LABELS = {
    "username": "用户名",
    "password": "密码",
    "current_password": "当前密码",
    "new_password": "新密码",
    "confirm_password": "确认新密码",
    "display_name": "显示名称",
    "role": "角色",
    "code": "编码",
    "name": "名称",
    "kind": "类型",
    "community_id": "所属社区",
    "organization_id": "所属单位",
    "store_ids": "兑换点",
    "collection_point_ids": "回收点",
    "status": "状态",
    "reason": "原因",
    "delta": "调整积分",
    "activity": "活动",
    "co2e_g_per_unit": "减排量（克 CO₂e / 单位）",
    "points": "固定积分",
    "daily_cap_points": "每日上限",
    "source": "依据来源",
    "effective_from": "生效时间",
    "address": "地址",
    "lat": "纬度",
    "lng": "经度",
    "geofence_m": "电子围栏半径",
    "categories": "回收品类",
    "collection_point_id": "回收点",
    "confirm": "",  # its messages begin 请勾选确认
    "cursor": "分页",
    "title": "规则名称",
    "unit": "计量单位",
    "nickname": "昵称",
    "items": "回收物",
    "category": "品类",
    "weight_g": "重量",
    "member_code": "会员码",
    "token": "二维码",
    "fit_to_caps": "按上限记录",
    "limit": "每页条数",
    "day": "日期",
    "near": "位置",
    "daily_total_exempt": "不计入每日合计",
}


def readable(fields: dict) -> str | None:
    """A refusal's first field message, the field named as a person knows it (`回收物第 2 项重量：…`), for the
    envelope's `message`, which a client shows as it is; None where a field has no such name."""
    leaves = list(_leaves((), fields))
    if not leaves:
        return None
    path, text = leaves[0]
    names = []
    for index, part in enumerate(path):
        # A list's item under a named field only (an unknown top-level "0" is no item), and a number int() reads.
        if index and part.isascii() and part.isdecimal() and len(part) <= 6:
            names.append(f"第 {int(part) + 1} 项")
        elif part in FIELD_LABELS:
            names.append(FIELD_LABELS[part])
        else:
            return None
    more = f"（另有 {len(leaves) - 1} 处需要修改）" if len(leaves) > 1 else ""
    return f"{''.join(names)}：{text}{more}" if any(names) else f"{text}{more}"


def _leaves(path: tuple[str, ...], value):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves((*path, str(key)), inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _leaves(path, inner)
    else:
        yield path, str(value)


def _with_plain_closed_range(init):
    """A range with both ends included, nearly every one here, reads 必须在 1 到 100 之间, not
    必须大于或等于 1 且小于或等于 100; marshmallow formats its messages as the validator is made."""

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        if self.min_inclusive and self.max_inclusive:
            self.message_all = "必须在 {min} 到 {max} 之间"

    return __init__


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
    validate.Range.__init__ = _with_plain_closed_range(validate.Range.__init__)
    validate.Range.message_gte, validate.Range.message_gt = "大于或等于", "大于"
    validate.Range.message_lte, validate.Range.message_lt = "小于或等于", "小于"
    validate.OneOf.default_message = "必须是以下之一：{choices}"
    validate.Regexp.default_message = "格式不正确"
    validate.Equal.default_message = "必须等于 {other}"


apply()
