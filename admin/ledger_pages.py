"""A resident's points (积分): profile, latest entries, manual adjustment; and the ledger check (账本校验)."""

from __future__ import annotations

import uuid

from flask import flash, redirect, render_template, request, url_for

from admin.blueprint import bp
from admin.forms import flash_at, load, present, rerender_on_error
from admin.security import current_admin_actor, only
from app.errors import AppError, Duplicate, ValidationError, field_error, fields_error
from app.ledger import service as ledger
from app.ledger.schemas import AdjustmentSchema, ReversalSchema
from app.ledger.verify import keep_check, latest_check, verify_ledger
from app.people import service as people
from app.people.models import Resident
from app.sorting import service as sorting
from app.sorting.schemas import DepositCorrectionSchema

PAGE_SIZE = 50
ACTIVITY_PAGE_SIZE = 10  # a resident's deposits and check-ins, below the ledger: what support asks about is recent
SHOWN_PROBLEMS = 50
# A check reads every entry, about 27 µs each on PostgreSQL at a year's volume; past this many it would outlast
# gunicorn's 30-second timeout, and the admin would get a 502 with nothing kept. The nightly CLI has no such bound.
WEB_VERIFY_MAX_ENTRIES = 400_000


def _resident_in_scope(resident_id: int) -> Resident:
    """ledger.profile() and ledger_page() read any account, so the staff scope check comes first."""
    return people.get_resident(current_admin_actor(), resident_id)


def _typed_lines() -> list[tuple[str, str]]:
    """The correction form's lines as typed: (category, weight's text), in the form's order."""
    categories, weights = request.form.getlist("category"), request.form.getlist("weight_g")
    return [(category, grams.strip()) for category, grams in zip(categories, weights, strict=False)]


def _correction_lines(deposit, typed: bool) -> list[tuple[str, str]]:
    """The correction form's lines: what was typed, on a refused form; else the deposit's own, and one blank to add."""
    if typed:
        return _typed_lines()
    return [(line.category, str(line.weight_g)) for line in deposit.items] + [("", "")]


def _resident_page(error=None, resident_id: int = 0, entry_id: int | None = None, deposit_id: int | None = None) -> str:
    resident = _resident_in_scope(resident_id)
    landed = isinstance(error, Duplicate)
    page = ledger.ledger_page(resident_id, request.args.get("cursor") or None, PAGE_SIZE)
    # A reversal's refusal shows on its row; for an entry not on this page (or not this resident's), above the rows.
    # What was weighed, where and by whom, and where the resident checked in: the ledger's lines say only the points.
    deposits = sorting.my_deposits(resident_id, None, request.args.get("deposits_cursor") or None, ACTIVITY_PAGE_SIZE)
    checkins = sorting.my_checkins(resident_id, None, request.args.get("checkins_cursor") or None, ACTIVITY_PAGE_SIZE)
    on_row = (entry_id is not None and any(e.id == entry_id for e in page["items"])) or (
        deposit_id is not None and any(d.id == deposit_id for d in deposits["items"])
    )
    return render_template(
        "admin/resident.html",
        resident=resident,
        profile=ledger.profile(resident_id),
        page=page,
        deposits=deposits,
        checkins=checkins,
        # Weighed at any community's point: a worker sees other communities' collectors by display name only.
        collectors=people.staff_names(
            [d.collector_id for d in deposits["items"] if d.collector_id], usernames=current_admin_actor().is_admin
        ),
        device_codes=sorting.device_codes([d.device_id for d in deposits["items"] if d.device_id]),
        failed_entry=entry_id if error and on_row else None,
        failed_deposit=deposit_id if error and on_row else None,
        correction_lines={d.id: _correction_lines(d, bool(error) and d.id == deposit_id) for d in deposits["items"]},
        row_error=error if on_row else None,
        reversed_ids=ledger.reversed_among([e.id for e in page["items"]]),
        status_history=people.status_history(current_admin_actor(), resident_id),
        # After a duplicate the adjustment it repeats has landed (the entries above show it): the form starts afresh,
        # with a reference of its own, rather than resending the same one for ever.
        form={} if landed or entry_id or deposit_id else request.form,
        row_form=request.form if entry_id or deposit_id else {},
        reference=(not landed and request.form.get("reference")) or uuid.uuid4().hex,
        error=None if on_row else error,
    )


@bp.get("/residents/<page_id:resident_id>")
def resident(resident_id: int):
    return _resident_page(resident_id=resident_id)


@bp.post("/residents/<page_id:resident_id>/adjustments")
@only("admin")
@rerender_on_error(_resident_page)
def adjust(resident_id: int):
    _resident_in_scope(resident_id)
    data = load(AdjustmentSchema(), present("delta", "reason"))
    reference = request.form.get("reference") or None
    entry = ledger.adjust(current_admin_actor(), resident_id, data["delta"], data["reason"], reference=reference)
    flash_at(f"已调整 {entry.delta:+d} 积分，当前余额 {entry.balance_after}", "entries")
    return redirect(url_for("admin.resident", resident_id=resident_id, _anchor="entries"))  # the new entry, on top


@bp.post("/residents/<page_id:resident_id>/entries/<page_id:entry_id>/reverse")
@only("admin")
@rerender_on_error(_resident_page)
def reverse(resident_id: int, entry_id: int):
    """Cancel one of this resident's entries with its exact opposite (a deposit weighed wrong, say), with a reason."""
    _resident_in_scope(resident_id)
    data = load(ReversalSchema(), present("reason"))
    if request.form.get("confirm") != "yes":
        raise field_error("confirm", "请勾选确认：冲正记入账本，不可撤销")
    entry = ledger.reverse_entry(current_admin_actor(), entry_id, data["reason"], of_resident=resident_id)
    flash(f"已冲正 {entry.delta:+d} 积分，当前余额 {entry.balance_after}", "success")
    return redirect(url_for("admin.resident", resident_id=resident_id))


@bp.post("/residents/<page_id:resident_id>/deposits/<page_id:deposit_id>/correction")
@only("admin")
@rerender_on_error(_resident_page)
def correct_deposit(resident_id: int, deposit_id: int):
    """Record one of this resident's deposits again with the right items (a mistyped weight, a wrong category)."""
    _resident_in_scope(resident_id)
    typed = _typed_lines()
    sent = [line for line, (_, grams) in enumerate(typed) if grams]  # a line left without a weight is no line
    # The lines' schema is the API's JSON one (a number, not its digits): digits are read here, anything else refused.
    items = [
        {"category": category, "weight_g": int(grams) if grams.isascii() and grams.isdecimal() else grams}
        for category, grams in (typed[line] for line in sent)
    ]
    fit = request.form.get("fit_to_caps")  # a checkbox: there ("true") or not
    if fit not in (None, "true"):
        raise field_error("fit_to_caps", "取值无效，请刷新页面后重试")
    try:
        data = load(DepositCorrectionSchema(), {"items": items, "fit_to_caps": fit == "true", **present("reason")})
    except AppError as error:
        raise _by_form_line(error, sent, unpicked="请选择品类") from None
    if request.form.get("confirm") != "yes":
        raise field_error("confirm", "请勾选确认：原投递的积分将被冲正，并按新的品类与重量重新记录")
    try:
        made = sorting.correct_deposit(current_admin_actor(), deposit_id, data, of_resident=resident_id)
    except AppError as error:  # a line the point does not take, say: numbered as sent, too
        raise _by_form_line(error, sent) from None
    redone = f"按 {made['weight_g']} 克重新记录为第 {made['id']} 笔，{made['points']} 积分"
    flash_at(f"已更正第 {deposit_id} 笔投递：{redone}", "deposits")
    return redirect(url_for("admin.resident", resident_id=resident_id, _anchor="deposits"))


def _by_form_line(error: AppError, sent: list[int], unpicked: str | None = None) -> AppError:
    """A refusal of the correction's items as the form shows them: each line named by its place on the form (a line
    without a weight is not sent, so the schema and the service count differently). `unpicked` replaces the schema's
    category message, which lists every code with its name for a collector's app; the service's own (该回收点不收…)
    stands."""
    fields = dict((error.details or {}).get("fields") or {})
    lines = fields.get("items")
    if not isinstance(lines, dict):
        return error
    fields["items"] = {
        sent[int(index)]: {**problems, "category": [unpicked]} if unpicked and "category" in problems else problems
        for index, problems in lines.items()
    }
    if unpicked:
        return fields_error(fields)
    return ValidationError(error.message, details={**(error.details or {}), "fields": fields})


@bp.route("/verify", methods=["GET", "POST"])
@only("admin")
def verify():
    """A GET shows the latest kept run (the nightly `flask ledger verify`, usually): a city's ledger is not read
    inside a request. Recomputing every chain here runs on an explicit POST, and is kept too."""
    if request.method == "POST":
        entries = ledger.entry_count()
        if entries > WEB_VERIFY_MAX_ENTRIES:
            flash(f"账本共有 {entries} 条记录，在网页中校验会超时：请由运维执行 flask ledger verify"
                  "（每晚的定时任务即是），结果会显示在这里", "error")  # fmt: skip
            return redirect(url_for("admin.verify"), 303)
        check, kept = keep_check(verify_ledger(), "admin", current_admin_actor().id)
        if kept:  # shown by the GET: a refresh reads the ledger again only when asked to
            return redirect(url_for("admin.verify"), 303)
        flash("本次校验的结果未能保存，仅在此显示", "error")
    else:
        check = latest_check()
    run_by = people.staff_names([check.staff_id]).get(check.staff_id) if check and check.staff_id else None
    return render_template("admin/verify.html", check=check, run_by=run_by, shown=SHOWN_PROBLEMS)
