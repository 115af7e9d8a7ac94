"""Liveness, readiness, the offline API docs assets, and the landing page behind poster QR codes."""

from __future__ import annotations

import marshmallow as ma
import sqlalchemy as sa
import swagger_ui_bundle
from alembic.script import ScriptDirectory
from flask import Blueprint, current_app, render_template_string, send_from_directory

from app.apidoc import error_docs
from app.common import ResponseSchema
from app.db import db
from app.errors import NotReady
from app.extensions import limiter
from app.http import Blueprint as ApiBlueprint
from app.http import error_response

blp = ApiBlueprint("ops", __name__, description="运维：存活与就绪检查")
pages = Blueprint("pages", __name__)
docs_assets = Blueprint("docs_assets", __name__)


class HealthSchema(ResponseSchema):
    status = ma.fields.String(metadata={"example": "ok"})
    database = ma.fields.String(metadata={"optional": True, "example": "ok", "description": "/readyz only"})
    rate_limits = ma.fields.String(
        metadata={
            "optional": True,
            "example": "ok",
            "description": "ok, or unavailable while the rate limits' Redis does not answer: staff logins then answer "
            "503 service_unavailable, and everything else carries on (so the instance stays ready)",
        }
    )


_LANDING = """<!doctype html><html lang="zh-CN"><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>绿色积分</title>
<body style="font-family:sans-serif;text-align:center;padding:3em 1em">
<h2>请在小程序中扫码打卡</h2><p>请在「湾区绿色积分」小程序中点击「扫码打卡」，再扫描此二维码，即可打卡领取积分。</p>
</body></html>"""


@blp.route("/healthz", methods=["GET"])
@blp.response(200, HealthSchema)
def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


@blp.route("/readyz", methods=["GET"])
@blp.response(200, HealthSchema)
@error_docs(NotReady)
def readyz():
    """Readiness: the database answers and is migrated to this code's schema (503 not_ready otherwise). The rate
    limits' Redis is reported but does not decide it: every instance shares it, so taking them all out of the load
    balancer would stop scans and deposits too."""
    try:
        migrated = _schema_revision()
    except sa.exc.SQLAlchemyError:
        db.session.rollback()
        return error_response(NotReady.code, NotReady.message, NotReady.status)
    expected, known = _code_revisions()
    if migrated != expected and (migrated is None or migrated in known):
        # New code on an old schema (or none) fails its requests: keep it out until `flask db upgrade` has run. A
        # revision this code does not know is a newer one (a release migrated first, this host restarts next): it
        # stays in, since migrations add to the schema the old code reads.
        details = {"database_revision": migrated, "code_revision": expected}
        message = "数据库结构不是最新版本，请先运行 flask db upgrade"
        return error_response(NotReady.code, message, NotReady.status, details)
    answer = {"status": "ok", "database": "ok"}
    if current_app.config.get("REDIS_URL") and limiter.enabled:
        answer["rate_limits"] = "ok" if limiter.storage.check() else "unavailable"
    return answer


def _schema_revision() -> str | None:
    """The schema's migration; None before any. A failure to read it (a lock wait, a lost connection) is the
    database's, not a sign that it was never migrated."""
    if not sa.inspect(db.session.connection()).has_table("alembic_version"):
        return None
    return db.session.scalar(sa.text("SELECT version_num FROM alembic_version"))


def _code_revisions() -> tuple[str, frozenset[str]]:
    """The newest migration this code ships and all it knows, read once per process."""
    if "code_revisions" not in current_app.extensions:
        scripts = ScriptDirectory(current_app.extensions["migrate"].directory)
        known = frozenset(script.revision for script in scripts.walk_revisions())
        current_app.extensions["code_revisions"] = (scripts.get_current_head(), known)
    return current_app.extensions["code_revisions"]


@pages.get("/q/<token>")
def poster_landing(token: str):
    """A poster QR opened outside the mini-program lands here."""
    return render_template_string(_LANDING)


@docs_assets.get("/api/v1/docs/static/<path:filename>")
def swagger_assets(filename: str):
    return send_from_directory(swagger_ui_bundle.swagger_ui_path, filename)
