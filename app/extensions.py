"""Unbound extension instances; create_app() binds them."""

from flask_jwt_extended import JWTManager
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_migrate import Migrate
from flask_smorest import Api

from app.db import db

migrate = Migrate(render_as_batch=True, compare_type=True)
jwt = JWTManager()
api = Api()
limiter = Limiter(key_func=get_remote_address, default_limits=[])

__all__ = ["api", "db", "jwt", "limiter", "migrate"]
