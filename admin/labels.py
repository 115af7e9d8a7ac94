"""zh-CN labels for the codes the services store (roles, kinds, statuses, categories)."""

from __future__ import annotations

from app.sorting.models import CATEGORY_NAMES, POINT_KIND_NAMES

ROLES = {
    "admin": "平台管理员",
    "worker": "社区工作者",
    "alliance": "联盟成员单位",
    "merchant": "兑换点店员",
    "collector": "回收员",
}

ORG_KINDS = {
    "party_unit": "党建单位",
    "new_sector_group": "新兴领域组织",
    "shop": "商户",
    "enterprise": "企业",
    "social_org": "社会组织",
    "government": "政府部门",
}

RESIDENT_STATUSES = {"active": "正常", "frozen": "已冻结", "closed": "已注销"}

POINT_KINDS = POINT_KIND_NAMES
CATEGORIES = CATEGORY_NAMES

ENTRY_KINDS = {
    "earn": "获得",
    "spend": "兑换",
    "refund": "退还",
    "expire": "过期",
    "adjust": "人工调整",
    "reverse": "冲正",
}

# Where an entry's points came from (ledger_entries.source).
SOURCES = {
    "checkin": "分类打卡",
    "sorting": "回收投递",
    "admin": "人工调整",
    "expiry": "年度到期",
}

UNITS = {"kg": "千克", "item": "件", "visit": "次", "day": "天", "person_km": "人·公里"}

# Form field names as shown next to a validation message.
FIELDS = {
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
    "daily_total_exempt": "不计入每日合计",
}


def label(mapping: dict[str, str], code: str | None) -> str:
    if code is None:
        return "—"
    return mapping.get(code, code)
