"""create_app(): the table of contents of the service."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app import config as app_config


def create_app(overrides: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=False)
    app.config.from_mapping(app_config.load(overrides))
    if app.config["PROXY_HOPS"]:
        # Behind nginx, every request comes from the proxy: the client's address (per-IP login limits, logs) and
        # scheme are taken from the headers the trusted proxies set, and only theirs.
        hops = app.config["PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    register_logging(app)
    register_extensions(app)
    register_http(app)
    register_blueprints(app)
    register_admin(app)
    register_cli(app)
    return app


def register_logging(app: Flask) -> None:
    from app.http import OneLineFormatter, RequestIdFilter

    handler = logging.StreamHandler()
    formatter = OneLineFormatter(
        "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S%z"
    )
    formatter.converter = time.gmtime  # UTC and saying so, like gunicorn's own lines
    handler.setFormatter(formatter)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger("app")
    root.setLevel(logging.INFO)
    if not root.handlers and not app.testing:
        root.addHandler(handler)
        root.propagate = False


def register_extensions(app: Flask) -> None:
    from app import models  # noqa: F401  (every table in the metadata, for migrations)
    from app.auth.jwt import register_jwt
    from app.db import end_request_transaction, ping_idle_connections
    from app.extensions import api, db, jwt, limiter, migrate

    db.init_app(app)
    app.teardown_appcontext(end_request_transaction)  # runs before Flask-SQLAlchemy's, registered earlier
    with app.app_context():
        ping_idle_connections(db.engine, app.config["DB_PING_AFTER_IDLE_SECONDS"])
    migrate.init_app(app, db, directory=str(app_config.INSTANCE_DIR.parent / "migrations"))
    jwt.init_app(app)
    register_jwt(jwt)
    limiter.init_app(app)
    api.init_app(app, spec_kwargs={"servers": [{"url": "/"}]})


def register_http(app: Flask) -> None:
    from app.http import register_http as register

    register(app)


def register_blueprints(app: Flask) -> None:
    from app.auth.routes import blp as auth
    from app.carbon.routes import blp as carbon
    from app.extensions import api
    from app.ledger.routes import blp as ledger
    from app.ops import blp as ops
    from app.ops import docs_assets, pages
    from app.people.routes import blp as people
    from app.sorting.routes import blp as sorting

    api.spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"})
    api.spec.components.security_scheme(
        "refreshToken",
        {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
         "description": "the refresh_token of the login's answer, as the bearer (POST /auth/refresh, /auth/logout)"},
    )  # fmt: skip
    for blueprint in (auth, people, carbon, ledger, sorting, ops):
        api.register_blueprint(blueprint)
    app.register_blueprint(pages)
    app.register_blueprint(docs_assets)


def register_admin(app: Flask) -> None:
    from admin import bp
    from app.http import AdminCookieSession

    app.register_blueprint(bp)
    app.session_interface = AdminCookieSession(bp.url_prefix)


def register_cli(app: Flask) -> None:
    from app.cli import register

    register(app)
