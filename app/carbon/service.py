"""The methodology in force, new rule versions, and the cap charges a posting carries."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from app.audit import service as audit
from app.cache import TtlCache
from app.carbon.methodology import CapCharge
from app.carbon.models import DAILY_TOTAL, Rule
from app.clock import utcnow
from app.common import named_page
from app.db import after_commit, commit, db
from app.errors import InvalidState, NotFound, field_error

RULE_CACHE_TTL_S = 10.0
DAILY_TOTAL_LABEL = "全部活动合计"  # the daily:total rule's title reads as a setting, not as a counter's name
_rules = TtlCache(RULE_CACHE_TTL_S)

RULE_FIELDS = ("title", "unit", "co2e_g_per_unit", "points", "daily_cap_points", "daily_total_exempt", "source")


def clear_cache() -> None:
    _rules.clear()


def _load_rules() -> dict[str, list[dict[str, Any]]]:
    by_activity: dict[str, list[dict[str, Any]]] = {}
    for rule in db.session.scalars(sa.select(Rule).order_by(Rule.activity, Rule.version)):
        by_activity.setdefault(rule.activity, []).append(
            {c: getattr(rule, c) for c in ("id", "activity", "version", "valid_from", "valid_to", *RULE_FIELDS)}
        )
    return by_activity


def _all_rules() -> dict[str, list[dict[str, Any]]]:
    """Every version of every rule, cached briefly: rules change rarely and are read on every posting."""
    return _rules.get("all", _load_rules)


class RuleView:
    """A detached, read-only rule snapshot from the cache."""

    def __init__(self, data: dict[str, Any]):
        self.__dict__.update(data)

    def in_force(self, at: datetime) -> bool:
        return self.valid_from <= at and (self.valid_to is None or at < self.valid_to)


def rule_in_force(activity: str, at: datetime | None = None) -> RuleView | None:
    at = at or utcnow()
    for data in reversed(_all_rules().get(activity, [])):
        view = RuleView(data)
        if view.in_force(at):
            return view
    return None


def require_rule(activity: str, field: str = "category", at: datetime | None = None) -> RuleView:
    rule = rule_in_force(activity, at)
    if rule is None:
        raise field_error(field, f"没有适用的积分规则：{activity}")
    return rule


def rules_in_force(at: datetime | None = None, prefix: str | None = None) -> list[RuleView]:
    at = at or utcnow()
    found = []
    for activity in sorted(_all_rules()):
        if prefix and not activity.startswith(prefix):
            continue
        rule = rule_in_force(activity, at)
        if rule is not None:
            found.append(rule)
    return found


def rule_page(prefix: str | None, cursor: str | None, limit: int) -> dict[str, Any]:
    return named_page(rules_in_force(prefix=prefix), lambda rule: rule.activity, cursor, limit)


def cap_charges(lines: list[tuple[RuleView, int]], at: datetime | None = None) -> list[CapCharge]:
    """Per-activity counters for each line, plus the daily total unless every rule is exempt."""
    per_activity: dict[str, tuple[RuleView, int]] = {}
    for rule, points in lines:
        previous = per_activity.get(rule.activity, (rule, 0))[1]
        per_activity[rule.activity] = (rule, previous + points)
    charges = [
        CapCharge(rule.activity, points, rule.daily_cap_points, cap_label(rule))
        for rule, points in per_activity.values()
    ]
    counted = sum(points for rule, points in per_activity.values() if not rule.daily_total_exempt)
    total_rule = rule_in_force(DAILY_TOTAL, at)
    if counted and total_rule is not None:
        charges.append(CapCharge(DAILY_TOTAL, counted, total_rule.daily_cap_points, cap_label(total_rule)))
    return charges


def cap_label(rule: RuleView) -> str:
    """A daily counter's name, in refusals and on the caps screen alike."""
    return DAILY_TOTAL_LABEL if rule.activity == DAILY_TOTAL else rule.title or rule.activity


def fit_to_room(lines: list[tuple[RuleView, int]], room: dict[str, int | None]) -> list[int]:
    """Each line's points that still fit under today's caps, the lines in order: a line takes what its activity's
    counter and the daily total (unless exempt) have left, as `room` says (None: uncapped), and what it takes is
    gone for the lines after it."""
    left = dict(room)
    fitted = []
    for rule, points in lines:
        keys = [rule.activity] + ([DAILY_TOTAL] if not rule.daily_total_exempt and DAILY_TOTAL in left else [])
        take = min([points, *(left[key] for key in keys if left.get(key) is not None)])
        for key in keys:
            if left.get(key) is not None:
                left[key] -= take
        fitted.append(take)
    return fitted


MAX_PUBLISH_LEAD = timedelta(days=366)


_NOT_WITHDRAWN = sa.or_(Rule.valid_to.is_(None), Rule.valid_to > Rule.valid_from)  # withdrawn: an empty period


def upcoming_versions(activity: str) -> list[Rule]:
    """Versions published but not yet in force (and not withdrawn): a new version starting no later replaces them."""
    return list(
        db.session.scalars(
            sa.select(Rule)
            .where(Rule.activity == activity, Rule.valid_from > utcnow(), _NOT_WITHDRAWN)
            .order_by(Rule.valid_from)
        )
    )


def version_replaced(upcoming: list[Rule], in_force: Any) -> Any:
    """The version a new one replaces, whose values it keeps where it says nothing: the latest of those not yet in
    force that it withdraws (a mistaken future version corrected keeps its other changes), else the one before it.
    The admin's publish form starts from it too."""
    return upcoming[-1] if upcoming else in_force


def next_version(activity: str) -> int:
    return (db.session.scalar(sa.select(sa.func.max(Rule.version)).where(Rule.activity == activity)) or 0) + 1


def publish_rule(actor, activity: str, changes: dict[str, Any], effective_from: datetime | None = None) -> Rule:
    """A new version of a rule, in force from `effective_from`; the version before it ends there. Versions not yet
    in force that would start at or after it are withdrawn (their period is emptied), so a mistaken future date
    can be corrected by publishing again."""
    actor.require_role("admin")
    latest = sa.select(Rule).where(Rule.activity == activity).order_by(Rule.version.desc()).limit(1)
    newest = db.session.scalar(latest.with_for_update())  # publications of one rule take turns
    # Read after the lock's wait: every worker caches rules for up to RULE_CACHE_TTL_S, and a version that starts no
    # sooner than that after the publication is seen by all of them before it applies, so no posting uses a
    # superseded rule. For the same reason only versions starting later than that can be withdrawn, and they are,
    # since they start at or after this one.
    now = utcnow()
    earliest = now + timedelta(seconds=RULE_CACHE_TTL_S)
    effective_from = effective_from or earliest
    if effective_from < earliest:
        raise field_error("effective_from", f"生效时间至少要在 {int(RULE_CACHE_TTL_S)} 秒之后")
    if effective_from > now + MAX_PUBLISH_LEAD:
        raise field_error("effective_from", "生效时间不能晚于一年之后")
    if newest is None and "unit" not in changes:
        raise NotFound(f"规则 {activity} 不存在")
    live = sa.select(Rule).where(Rule.activity == activity, _NOT_WITHDRAWN)
    withdrawn = list(db.session.scalars(live.where(Rule.valid_from >= effective_from).order_by(Rule.version)))
    for version in withdrawn:
        version.valid_to = version.valid_from
    current = db.session.scalar(live.where(Rule.valid_from < effective_from).order_by(Rule.version.desc()).limit(1))
    replaced = version_replaced(withdrawn, current)
    if replaced is not None and "unit" in changes and changes["unit"] != replaced.unit:
        # Every version of a rule is read in the same unit (deposits weigh in kg): a new unit is a new activity.
        raise field_error("unit", "已有规则不能更改计量单位")
    fields = {f: getattr(replaced, f) for f in RULE_FIELDS} if replaced else {}
    fields.update({k: v for k, v in changes.items() if k in RULE_FIELDS})
    if not fields.get("title"):  # a new activity: the code is no name for a resident to read
        raise field_error("title", "请填写规则名称：居民在积分明细和上限提示中看到的就是它")
    if not withdrawn and current is not None and all(fields[f] == getattr(current, f) for f in RULE_FIELDS):
        # A copy of the version in force (the admin's form comes filled in with it). The same values replacing a
        # future version are a new start date, and go through.
        raise field_error("source", f"与第 {current.version} 版完全相同，未发布：请修改要调整的数值或依据来源")
    if current is not None:
        current.valid_to = effective_from
    rule = Rule(
        activity=activity,
        version=(newest.version + 1) if newest else 1,
        valid_from=effective_from,
        created_by=actor.id,
        **fields,
    )
    rule.co2e_g_per_unit = Decimal(rule.co2e_g_per_unit or 0)
    db.session.add(rule)
    try:
        db.session.flush()
    except IntegrityError as exc:  # another admin published a version of this rule meanwhile
        raise InvalidState("该规则刚被其他管理员更新，请刷新后再试") from exc
    details = {"activity": activity, "version": rule.version}
    if withdrawn:
        details["withdrawn_versions"] = [version.version for version in withdrawn]
    audit.record(actor, "rule.publish", "rule", rule.id, details)
    commit()
    after_commit(clear_cache)
    return rule
