"""zh-CN labels for the codes the services store (roles, kinds, statuses, categories)."""

from __future__ import annotations

from app.i18n import FIELD_LABELS
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

# Form field names as shown next to a validation message: the API's names for them.
FIELDS = FIELD_LABELS


def label(mapping: dict[str, str], code: str | None) -> str:
    if code is None:
        return "—"
    return mapping.get(code, code)
