"""From HTML forms to the dicts the services take, and back to the page when a service says no."""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Iterable
from functools import wraps
from typing import Any

import marshmallow as ma
from flask import flash, g, get_flashed_messages, make_response, redirect, request, session
from jinja2 import pass_context
from markupsafe import Markup

from app.db import db, fits_key
from app.errors import AppError, field_error, fields_error
from app.idempotency.service import run_once

FORM_KEY = "form_key"


def text(name: str) -> str:
    return (request.form.get(name) or "").strip()


def present(*names: str) -> dict[str, str]:
    """The named fields that were filled in; blank fields are left out so schema defaults apply."""
    return {name: text(name) for name in names if text(name)}


def nullable(*names: str) -> dict[str, str | None]:
    """The named fields, a blank one meaning "none" (for example: no daily cap)."""
    return {name: text(name) or None for name in names}


def many(name: str) -> list[str]:
    return [value for value in request.form.getlist(name) if value.strip()]


def load(schema: ma.Schema, data: dict[str, Any]) -> dict[str, Any]:
    """Validate with the API's own schema, so the admin site accepts exactly what the API accepts (its numbers
    arrive as the form's text)."""
    schema.text_input = True
    try:
        return schema.load(data)
    except ma.ValidationError as exc:
        raise fields_error(exc.normalized_messages()) from exc


def switch(name: str) -> bool:
    """A hidden on/off field ("1" or "0"). Anything else is refused, never read as off."""
    value = request.form.get(name)
    if value not in ("0", "1"):
        raise field_error(name, "取值无效，请刷新页面后重试")
    return value == "1"


def active_switch(retire_warning: str) -> bool:
    """The "active" switch of a retire/bring-back form: turning something off needs the 确认 box ticked."""
    active = switch("active")
    if not active and request.form.get("confirm") != "yes":
        raise field_error("confirm", f"请勾选确认：{retire_warning}")
    return active


def query_value(schema: ma.Schema, name: str) -> Any:
    """One filter from the query string, read by the API's own schema (`schema` loads only it); a value the API would
    refuse is no filter here."""
    raw = request.args.get(name, "").strip()
    if not raw:
        return None
    try:
        return schema.load({name: raw})[name]
    except ma.ValidationError:
        return None


def int_arg(name: str) -> int | None:
    """A filter id from the query string; anything else (or beyond what the database holds) is no filter."""
    raw = request.args.get(name, "").strip()
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else None
    return value if fits_key(value) else None


FOCUSED = "admin_focused"  # g: a field of the refused form has taken the focus
REFUSED = "admin_refused"  # g: the page shows a refused form (its title says 错误：)
# In the error box; settle_focus() makes it autofocus or nothing. Its quotes are escaped wherever a page shows what
# someone typed (a nickname in the title, before the box), so only the box's tag can hold it.
BOX_FOCUS = Markup(' data-focus="unless-a-field"')
# The id of what a refused page focuses, and the anchor of a form lower down its page: a browser ignores autofocus
# on a page opened at a fragment (the row's #deposit-N) but focuses the fragment's element, and scrolls to it.
FIX = "fix"


@pass_context
def invalid(context, name: str, error: AppError | None = None) -> Markup:
    """` aria-invalid="true"` on a field the page's refusal (`error`, or a row's refusal given) names: screen readers
    say so, and the field is marked where the error box above the form only lists it. `aria-describedby` reads it its
    message in the box (`form_error` gives it the id), and the first such field on the page takes the focus, so the
    keyboard starts where the fix is. `name` is a path for a field in a list (`items.2.weight_g`)."""
    error = error if error is not None else context.get("error")
    found: Any = ((error.details or {}).get("fields") or {}) if isinstance(error, AppError) else {}
    for part in name.split("."):
        if not isinstance(found, dict):
            return Markup("")
        # A line's errors are keyed by its index: a number from the schema, its digits from a service.
        found = found.get(part) if part in found else found.get(int(part)) if part.isdigit() else None
    if not found:
        return Markup("")
    attributes = Markup(' aria-invalid="true" aria-describedby="{}"').format(error_id(name.split(".")))
    if not g.get(FOCUSED):
        setattr(g, FOCUSED, True)
        attributes += Markup(' id="{}" autofocus').format(FIX)
    return attributes


def error_id(path: list[str] | tuple[str, ...]) -> str:
    return "err-" + "-".join(path)


def settle_focus(response):
    """The error box comes before the fields it lists, so whether one of them took the focus is known only once the
    page is rendered: if none did (a refusal naming no field, or none this page has), the box takes it."""
    focused = g.pop(FOCUSED, False)  # g can outlive the request (a test's app context)
    if response.mimetype != "text/html" or response.is_streamed:
        return response
    body = response.get_data(as_text=True)
    if BOX_FOCUS in body:
        body = body.replace(BOX_FOCUS, "" if focused else f' id="{FIX}" autofocus', 1).replace(BOX_FOCUS, "")
        response.set_data(body)
    return response


def said_by_fields(error: AppError) -> bool:
    """Whether the error's message only repeats what its fields' list says: a single field's sentence, or the first
    field named as the API's `message` names it (`原因：…`)."""
    from app.i18n import readable

    fields = (error.details or {}).get("fields") or {}
    listed = [message for _, _, message in field_messages(error)]
    return bool(fields) and (listed == [error.message] or error.message == readable(fields))


def field_messages(error: AppError | None, labels: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    """(id, field, message) triples from an error's details, flattened for display: the id (on a field's first
    message) is what `invalid` points the field's aria-describedby at; a field in a list is named with its line
    (回收物第 3 项品类); `labels` names fields as the page's form does where it differs from the usual name."""
    from admin.labels import FIELDS

    if error is None:
        return []
    names = FIELDS | (labels or {})
    found: list[tuple[str, str, str]] = []

    def name(path: tuple[str, ...]) -> str:
        parts = []
        for index, part in enumerate(path):
            if index and part.isdigit():
                parts.append(f"第 {int(part) + 1} 项")
            elif part in names:
                parts.append(names[part])
            else:  # a field the page has no input for (active, reference, _schema): the message alone, never its name
                return ""
        return "".join(parts)

    def walk(path: tuple[str, ...], value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk((*path, str(key)), inner)
        elif isinstance(value, list | tuple):
            for inner in value:
                walk(path, inner)
        else:
            first = not any(shown[0] == error_id(path) for shown in found)
            found.append((error_id(path) if first else "", name(path), str(value)))

    walk((), (error.details or {}).get("fields", {}))
    return found


def flash_at(message: str, place: str) -> None:
    """A success message shown at `place`, the id of the section the redirect's anchor opens the page at: at the
    top of the page it would be out of sight (a resident's deposits are below fifty ledger lines)."""
    flash(message, f"success@{place}")


def flashed(place: str | None, placed: Iterable[str] = ()) -> list[tuple[str, str]]:
    """This request's (category, message) pairs for `place`; for None (the top of the page), those for no place
    and those for a place not among the page's `placed`, which are never lost."""
    found = []
    for category, message in get_flashed_messages(with_categories=True):
        kind, _, at = category.partition("@")
        if (at == place) if place else (at not in placed):
            found.append((kind, message))
    return found


def rerender_on_error(page: Callable[..., str]):
    """A form POST that a service refuses shows its page again, with the message, the values typed and
    the error's HTTP status. `page(error=..., **view_kwargs)` renders that page."""

    def decorator(view):
        @wraps(view)
        def wrapper(**kwargs):
            try:
                return view(**kwargs)
            except AppError as error:
                db.session.rollback()
                try:
                    setattr(g, REFUSED, True)
                    body = page(error=error, **kwargs)
                except AppError:
                    raise error from None
                finally:
                    setattr(g, REFUSED, False)
                return body, error.status, dict(error.headers)

        return wrapper

    return decorator


def form_key_field() -> Markup:
    """The hidden one-time key of a form that creates something (see `once_per_form`)."""
    return Markup('<input type="hidden" name="{}" value="{}">').format(FORM_KEY, secrets.token_urlsafe(16))


def once_per_form(
    replayed: str = "这份表单刚才已经提交过，没有重复提交",
    then: Callable[..., str] | None = None,
    category: str = "success",
):
    """A form that creates something carries a one-time key. Sent again exactly as it was (a double click, or a
    reload of the answer, which the browser sends again), it is not acted on twice: the repeat goes where the first
    answer led and says `replayed`. `then(**view_kwargs)` is where that is when the first answer was a page rather
    than a redirect (a secret shown once, which is never shown again); `category` is the message's flash category.
    The same form sent with other values (the user went back and changed them) is a new submission."""

    def decorator(view):
        @wraps(view)
        def wrapper(**kwargs):
            from admin.security import CSRF_FIELD, current_admin_actor

            if not request.form.get(FORM_KEY):
                return view(**kwargs)
            values = sorted((k, v) for k, vs in request.form.lists() if k != CSRF_FIELD for v in vs)
            digest = hashlib.sha256(json.dumps([request.path, values], ensure_ascii=False).encode()).hexdigest()

            def answer(response) -> dict[str, str]:
                if 300 <= response.status_code < 400:
                    return {"location": response.location}
                if then is None:
                    raise TypeError(f"{view.__name__} answers with a page: once_per_form needs then= to send a repeat")
                return {"location": then(**kwargs)}

            def replay(row):
                pending = [list(message) for message in session.get("_flashes", [])]
                if [category, replayed] not in pending:  # sent three times before a page was read: said once
                    flash(replayed, category)
                return redirect(row.response_body["location"])

            scope = f"admin-form:{current_admin_actor().identity}"
            return run_once(
                scope,
                digest,
                digest,
                lambda: make_response(view(**kwargs)),
                keep=lambda response: response.status_code < 400,
                answer=answer,
                replay=replay,
            )

        return wrapper

    return decorator
