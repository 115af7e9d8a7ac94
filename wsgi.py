from app import create_app
from app.config import ConfigError

try:
    app = create_app()
except ConfigError as exc:  # flask's commands (db upgrade, seed) say it in one line too
    raise SystemExit(f"refusing to start: {exc}") from None
