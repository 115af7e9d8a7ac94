"""Unbound extension instances; create_app() binds them."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate

from app.auth.jwt import CachingJWTManager
from app.db import db
from app.http import AppApi

migrate = Migrate(render_as_batch=True, compare_type=True)
jwt = CachingJWTManager()
api = AppApi()
limiter = Limiter(key_func=get_remote_address, default_limits=[])


__all__ = ["api", "db", "jwt", "limiter", "migrate"]
