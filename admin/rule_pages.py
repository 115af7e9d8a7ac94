"""积分规则: the rules in force, and publishing a new version of one (carbon.service)."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, url_for

from admin.blueprint import bp
from admin.forms import load, nullable, once_per_form, rerender_on_error, text
from admin.security import current_admin_actor, only
from admin.views import local_time
from app.carbon import service as carbon
from app.carbon.schemas import RulePublishSchema
from app.errors import NotFound


@bp.get("/rules")
def rules():
    return render_template("admin/rules.html", rules=carbon.rules_in_force())


def _publish_page(error=None) -> str:
    activity = request.values.get("activity", "")
    rule = carbon.rule_in_force(activity)
    if rule is None:
        raise NotFound(f"规则 {activity} 不存在或未生效")
    upcoming = carbon.upcoming_versions(activity)
    return render_template(
        "admin/rule_publish.html",
        rule=rule,
        base=carbon.version_replaced(upcoming, rule),  # what the form's blanks would keep
        upcoming=upcoming,
        next_version=carbon.next_version(activity),
        form=request.form,
        error=error,
    )


@bp.get("/rules/publish")
@only("admin")
def publish_rule_form():
    return _publish_page()


@bp.post("/rules/publish")
@only("admin")
@rerender_on_error(_publish_page)
@once_per_form()
def publish_rule():
    """The form comes filled with the version in force; what is submitted becomes the next version.
    A blank fixed-points or cap field means none (points from grams; no daily cap)."""
    data = {"activity": text("activity"), "source": text("source"), "co2e_g_per_unit": text("co2e_g_per_unit")}
    data.update(nullable("points", "daily_cap_points"))
    body = load(RulePublishSchema(), data)
    activity = body.pop("activity")
    body.pop("effective_from", None)
    rule = carbon.publish_rule(current_admin_actor(), activity, body)
    starts = local_time(rule.valid_from, "%Y-%m-%d %H:%M:%S")
    flash(f"已发布「{rule.title or rule.activity}」第 {rule.version} 版，将于 {starts} 生效", "success")
    return redirect(url_for("admin.rules"))
