"""The only place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

INSTANCE_DIR = Path(__file__).resolve().parent.parent / "instance"

DEV_SECRET = "dev-secret-change-me"
DEV_JWT_SECRET = "dev-jwt-secret-change-me-0123456789abcdef"
DEV_QR_SECRET = "dev-qr-secret-change-me"
# HS256 tokens, session cookies and QR signatures are only as strong as their key; a short one can be guessed offline.
MIN_SECRET_LENGTH = 32

ENVIRONMENTS = ("development", "test", "production")
REDIS_SCHEMES = ("redis", "rediss", "redis+unix", "redis+sentinel", "redis+cluster")  # what `limits` opens
MAX_PROCESSES = 64


DEFAULT_BIND = "127.0.0.1:5000"


def listen_address(environ: Mapping[str, str] | None = None) -> str:
    """Where gunicorn listens (`BIND`): gunicorn.conf.py binds it, `make run`'s banner prints it, and outside
    production poster links point at it."""
    return (os.environ if environ is None else environ).get("BIND") or DEFAULT_BIND


class ConfigError(RuntimeError):
    """The configuration is unsafe or invalid; the app refuses to start."""


def _absolute_url(url: str, schemes: set[str]) -> bool:
    """A base address that paths are appended to (posters' /q/<token>, WeChat's /sns/jscode2session): one of these
    schemes as written, a host, no query or fragment (not even an empty one), no spaces."""
    parts = urlsplit(url)
    return (
        url.split(":", 1)[0] in schemes
        and bool(parts.hostname)
        and not any(character in url for character in "?# \t\r\n")
    )


def database_url(raw: str | None) -> str:
    """Normalise DATABASE_URL: the usual postgres forms map to the installed psycopg 3 driver."""
    if not raw:
        INSTANCE_DIR.mkdir(exist_ok=True)
        return f"sqlite:///{INSTANCE_DIR / 'tanpuhui.db'}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def _bool(name: str, value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    word = value.strip().lower()
    if word not in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
        raise ConfigError(f"{name} must be true or false, not {value!r}")
    return word in {"1", "true", "yes", "on"}


API_CONVENTIONS = (
    "约定（详见 API.md）：请求与应答均为 UTF-8 JSON；同一对象中的字段名不可重复（400 bad_request），"
    "请求体中未声明的字段是 422 validation_error；声明了查询参数的接口（列表、筛选），不认识或重复出现的查询参数"
    "也是 422（图片接口除外：其地址常带防缓存的时间戳），不声明查询参数的接口不读查询字符串；文本字段不接受空字符、"
    "控制字符与文字方向控制符（原因、来源等多行文本可含换行与制表符），前后空白会被去掉，"
    "只有空白的必填文本视为未填。时间为带时区偏移的 ISO 8601（服务器给出 UTC），“一天”指上海本地日。"
    '每个 4xx/5xx 应答都是 {"error": {"code", "message", "details", "request_id"}}，code 稳定可判断，'
    "message 为可直接展示的中文（422 的 message 指明第一个需要修改的字段，全部字段见 details.fields）。"
    "每个应答带 X-Request-Id（请求可自带 8 到 64 位的 [A-Za-z0-9._-]），"
    "错误应答的 request_id 与之相同（500 的 details.request_id 亦然；幂等重放的错误应答保留首次请求的编号），"
    "可随提示一并显示，报障时请附上。"
    "列表按游标分页：?limit= 与上一页的 next 作为 ?cursor=，next 为 null 即最后一页。"
    "声明了 Idempotency-Key 请求头的写操作（积分与库存相关）可带它安全重试，"
    "重放的应答带 Idempotent-Replayed: true；其他接口忽略该请求头。429 与 503 带 Retry-After（秒）。"
    "401 token_expired：用 refresh token 调 /auth/refresh 换新的 access token"
    "（/auth/refresh 本身答 token_expired 或 token_revoked 时请重新登录）；"
    "401 token_revoked、unauthorized：请重新登录。新版本可能增加应答字段、code、details 字段与枚举值，"
    "客户端应能容忍（文档中应答的 additionalProperties: false 只说明本版本的应答，不要据此拒绝新字段）。"
)


def _number(name: str, value: str, low: float, high: float, kind=int):
    """A number within the bounds that make sense for the setting: 0 keep-days would prune every stored answer."""
    try:
        number = kind(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, not {value!r}") from exc
    if not low <= number <= high:
        raise ConfigError(f"{name} must be from {low} to {high}, not {value!r}")
    return number


def limits_counted_in_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Rate limits are on and have no shared store (`REDIS_URL`): each server process counts its own."""
    return Settings.from_env(environ).limits_in_memory


def _cores() -> int:
    """The cores this process may run on (a container's cpuset, not the host's count), at least one."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def server_processes(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """gunicorn's worker processes and threads per process (`WEB_CONCURRENCY`, `GUNICORN_THREADS`). By default two
    processes per core of one thread each, but one process of eight threads while the rate limits count in memory:
    five wrong passwords then lock a username for the whole server, not for one of four workers."""
    e = os.environ if environ is None else environ
    alone = limits_counted_in_memory(e)
    default_workers = 1 if alone else min(2 * _cores(), MAX_PROCESSES)
    workers = _number("WEB_CONCURRENCY", e.get("WEB_CONCURRENCY") or str(default_workers), 1, MAX_PROCESSES)
    threads = _number("GUNICORN_THREADS", e.get("GUNICORN_THREADS") or ("8" if alone else "1"), 1, 64)
    return workers, threads


@dataclass
class Settings:
    env: str
    database_url: str
    secret_key: str
    jwt_secret_key: str
    qr_secret: str
    timezone: str
    wechat_mode: str
    wechat_appid: str
    wechat_secret: str
    wechat_api_base: str
    wechat_timeout: float
    redis_url: str | None
    ratelimit_enabled: bool
    public_base_url: str | None  # as given; links fall back to the listening address outside production
    bind: str
    access_minutes: int
    refresh_days: int
    points_per_kg_co2e: int
    expiry_years: int
    member_code_ttl_s: int
    device_clock_skew_s: int
    idempotency_keep_days: int
    db_ping_after_idle_s: float
    db_lock_timeout_ms: int
    db_statement_timeout_ms: int
    db_idle_in_transaction_timeout_ms: int
    db_connect_timeout_s: int
    proxy_hops: int
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        e = os.environ if environ is None else environ
        env = (e.get("APP_ENV") or "development").strip().lower()
        if env not in ENVIRONMENTS:
            # A typo such as APP_ENV=prod must not fall back to development's stub logins and known secrets.
            raise ConfigError(f"APP_ENV must be one of {', '.join(ENVIRONMENTS)}, not {e.get('APP_ENV')!r}")
        return cls(
            env=env,
            database_url=database_url(e.get("DATABASE_URL")),
            secret_key=e.get("SECRET_KEY") or DEV_SECRET,
            jwt_secret_key=e.get("JWT_SECRET_KEY") or DEV_JWT_SECRET,
            qr_secret=e.get("QR_SECRET") or DEV_QR_SECRET,
            timezone=e.get("TIMEZONE", "Asia/Shanghai"),
            wechat_mode=e.get("WECHAT_MODE", "real" if env == "production" else "stub"),
            wechat_appid=e.get("WECHAT_APPID", ""),
            wechat_secret=e.get("WECHAT_SECRET", ""),
            wechat_api_base=e.get("WECHAT_API_BASE", "https://api.weixin.qq.com").rstrip("/"),
            wechat_timeout=_number("WECHAT_TIMEOUT", e.get("WECHAT_TIMEOUT", "5"), 0.1, 60, float),
            redis_url=e.get("REDIS_URL") or None,
            ratelimit_enabled=_bool("RATELIMIT_ENABLED", e.get("RATELIMIT_ENABLED"), True),
            public_base_url=(e.get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            bind=listen_address(e),
            access_minutes=_number("ACCESS_TOKEN_MINUTES", e.get("ACCESS_TOKEN_MINUTES", "15"), 1, 1440),
            refresh_days=_number("REFRESH_TOKEN_DAYS", e.get("REFRESH_TOKEN_DAYS", "30"), 1, 365),
            points_per_kg_co2e=_number("POINTS_PER_KG_CO2E", e.get("POINTS_PER_KG_CO2E", "10"), 1, 1000),
            expiry_years=_number("POINTS_EXPIRY_YEARS", e.get("POINTS_EXPIRY_YEARS", "1"), 1, 10),
            member_code_ttl_s=_number("MEMBER_CODE_TTL_SECONDS", e.get("MEMBER_CODE_TTL_SECONDS", "120"), 10, 86400),
            device_clock_skew_s=_number(
                "DEVICE_CLOCK_SKEW_SECONDS", e.get("DEVICE_CLOCK_SKEW_SECONDS", "300"), 10, 3600
            ),
            idempotency_keep_days=_number("IDEMPOTENCY_KEEP_DAYS", e.get("IDEMPOTENCY_KEEP_DAYS", "30"), 1, 3650),
            db_ping_after_idle_s=_number(
                "DB_PING_AFTER_IDLE_SECONDS", e.get("DB_PING_AFTER_IDLE_SECONDS", "1"), 0, 3600, float
            ),
            proxy_hops=_number("PROXY_HOPS", e.get("PROXY_HOPS", "0"), 0, 5),
            db_lock_timeout_ms=_number("DB_LOCK_TIMEOUT_MS", e.get("DB_LOCK_TIMEOUT_MS", "5000"), 0, 3_600_000),
            db_statement_timeout_ms=_number(
                "DB_STATEMENT_TIMEOUT_MS", e.get("DB_STATEMENT_TIMEOUT_MS", "0"), 0, 86_400_000
            ),
            db_idle_in_transaction_timeout_ms=_number(
                "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", e.get("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "0"), 0, 86_400_000
            ),
            db_connect_timeout_s=_number("DB_CONNECT_TIMEOUT_SECONDS", e.get("DB_CONNECT_TIMEOUT_SECONDS", "3"), 2, 60),
        )

    def validate(self) -> None:
        """Refuse an unsafe or invalid configuration, naming every problem at once, so that an operator mends them
        in one go rather than one restart each."""
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))

    def problems(self) -> list[str]:
        found = []
        try:
            ZoneInfo(self.timezone)
        except Exception:
            found.append(f"TIMEZONE {self.timezone!r} is not a known zone")
        if self.wechat_mode not in {"stub", "real"}:
            found.append("WECHAT_MODE must be 'stub' or 'real'")
        if self.redis_url and self.redis_url.split(":", 1)[0] not in REDIS_SCHEMES:
            found.append(f"REDIS_URL must start with {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        if self.public_base_url and not _absolute_url(self.public_base_url, {"http", "https"}):
            found.append(f"PUBLIC_BASE_URL must be an address such as https://example.cn, not {self.public_base_url!r}")
        if self.env == "production":
            found += self._production_problems()
        return found

    def _secrets(self) -> dict[str, tuple[str, str]]:
        """Each secret's value and its published development default."""
        return {
            "SECRET_KEY": (self.secret_key, DEV_SECRET),
            "JWT_SECRET_KEY": (self.jwt_secret_key, DEV_JWT_SECRET),
            "QR_SECRET": (self.qr_secret, DEV_QR_SECRET),
        }

    def _production_problems(self) -> list[str]:
        found = []
        secrets = self._secrets()
        left = [name for name, (value, default) in secrets.items() if value == default]
        if left:
            found.append(f"production refuses default secrets: {', '.join(left)}")
        short = [
            name for name, (value, default) in secrets.items() if value != default and len(value) < MIN_SECRET_LENGTH
        ]
        if short:
            found.append(f"production needs secrets of at least {MIN_SECRET_LENGTH} characters: {', '.join(short)}")
        if len({value for value, _ in secrets.values()}) < len(secrets):
            found.append(f"production needs a different value for each of {', '.join(secrets)}")
        if self.wechat_mode != "real":
            found.append("production refuses WECHAT_MODE=stub")
        if not (self.wechat_appid and self.wechat_secret):
            found.append("production needs WECHAT_APPID and WECHAT_SECRET")
        if not self.public_base_url:
            found.append("production needs PUBLIC_BASE_URL: poster QR codes are printed with it")
        elif not _absolute_url(self.public_base_url, {"https"}):
            found.append(
                "production needs an https:// PUBLIC_BASE_URL: posters and the admin site's cookies rely on it"
            )
        if self.limits_in_memory:
            found.append(
                "production needs REDIS_URL for its rate limits: in memory, each worker would count its own "
                "(or set RATELIMIT_ENABLED=false)"
            )
        if not self.database_url.startswith("postgresql"):
            found.append("production needs DATABASE_URL=postgresql://…: without it the server would open a SQLite file")
        if not _absolute_url(self.wechat_api_base, {"https"}):
            found.append("production needs an https:// WECHAT_API_BASE: the mini-program's secret is sent to it")
        return found

    def hazards(self) -> list[str]:
        """What makes this configuration unfit to serve residents, outside production (production refuses them)."""
        if self.env == "production":
            return []
        found = []
        if self.wechat_mode == "stub":
            found.append("WeChat logins are stubbed (any openid logs in)")
        published = [name for name, (value, default) in self._secrets().items() if value == default]
        if published:
            found.append(f"{', '.join(published)} are the development values published with the code")
        return found

    @property
    def limits_in_memory(self) -> bool:
        """Rate limits on without a shared store: each server process counts its own."""
        return self.ratelimit_enabled and not self.redis_url

    def pg_options(self) -> str:
        """PostgreSQL session settings (0 is no limit). A row lock held by a stuck transaction (a host that hung
        mid-request, whose half-open connection PostgreSQL keeps for hours) makes a request wait at most the lock
        timeout, then answer 503 to try again, instead of holding a worker until gunicorn kills it. gunicorn.conf.py
        also bounds a statement below its worker timeout and ends a transaction left idle by a hung host; the
        command line keeps no such bounds, for jobs and checks that take longer."""
        return (
            f"-c lock_timeout={self.db_lock_timeout_ms} -c statement_timeout={self.db_statement_timeout_ms} "
            f"-c idle_in_transaction_session_timeout={self.db_idle_in_transaction_timeout_ms}"
        )

    def pg_connect_args(self) -> dict[str, Any]:
        """libpq's own bounds, which hold when the server cannot enforce its own: a host that accepts connections but
        never answers fails a new connection after the connect timeout, and a pooled connection to a host gone
        silent (a failover, a cable) fails within seconds rather than when gunicorn kills the worker. Both are then
        a 503 to try again."""
        return {
            "options": self.pg_options(),
            "connect_timeout": self.db_connect_timeout_s,
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 3,
            "tcp_user_timeout": 10_000,  # ms: data sent and not acknowledged
        }

    def flask_config(self) -> dict[str, Any]:
        # No pool_pre_ping: db.ping_idle_connections checks idle ones. A failed statement's error (and so the log)
        # leaves out its parameters, which hold openids, password hashes and device secrets.
        engine_options: dict[str, Any] = {"hide_parameters": True}
        if self.database_url.startswith("postgresql"):
            engine_options |= {"pool_size": 10, "max_overflow": 40, "connect_args": self.pg_connect_args()}
        return {
            "APP_ENV": self.env,
            "SECRET_KEY": self.secret_key,
            "SQLALCHEMY_DATABASE_URI": self.database_url,
            "SQLALCHEMY_ENGINE_OPTIONS": engine_options,
            "DB_PING_AFTER_IDLE_SECONDS": self.db_ping_after_idle_s,
            "PROXY_HOPS": self.proxy_hops,
            "MAX_CONTENT_LENGTH": 64 * 1024,
            # The admin site's signed session cookie is refused after this, even if someone copied it.
            "PERMANENT_SESSION_LIFETIME": timedelta(hours=12),
            "JWT_SECRET_KEY": self.jwt_secret_key,
            "JWT_ACCESS_TOKEN_EXPIRES": timedelta(minutes=self.access_minutes),
            "JWT_REFRESH_TOKEN_EXPIRES": timedelta(days=self.refresh_days),
            "JWT_TOKEN_LOCATION": ["headers"],
            "JWT_ERROR_MESSAGE_KEY": "message",
            "RATELIMIT_ENABLED": self.ratelimit_enabled,
            "RATELIMIT_STORAGE_URI": self.redis_url or "memory://",
            # A Redis that hangs must not hold a worker until gunicorn's timeout: a second, then 503.
            "RATELIMIT_STORAGE_OPTIONS": {"socket_timeout": 1, "socket_connect_timeout": 1} if self.redis_url else {},
            "RATELIMIT_HEADERS_ENABLED": True,
            "RATELIMIT_KEY_PREFIX": "tph",
            "API_TITLE": "上海湾区高新区 碳普惠积分 API",
            "API_VERSION": "v1",
            "API_SPEC_OPTIONS": {"info": {"description": API_CONVENTIONS}},
            "OPENAPI_VERSION": "3.0.3",
            "OPENAPI_URL_PREFIX": "/api/v1",
            "OPENAPI_JSON_PATH": "openapi.json",
            "OPENAPI_SWAGGER_UI_PATH": "docs",
            "OPENAPI_SWAGGER_UI_URL": "/api/v1/docs/static/",
            "TIMEZONE": self.timezone,
            "QR_SECRET": self.qr_secret,
            "PUBLIC_BASE_URL": self.public_base_url or f"http://{self.bind}",
            "WECHAT_MODE": self.wechat_mode,
            "WECHAT_APPID": self.wechat_appid,
            "WECHAT_SECRET": self.wechat_secret,
            "WECHAT_API_BASE": self.wechat_api_base,
            "WECHAT_TIMEOUT": self.wechat_timeout,
            "REDIS_URL": self.redis_url,
            "POINTS_PER_KG_CO2E": self.points_per_kg_co2e,
            "POINTS_EXPIRY_YEARS": self.expiry_years,
            "MEMBER_CODE_TTL_SECONDS": self.member_code_ttl_s,
            "DEVICE_CLOCK_SKEW_SECONDS": self.device_clock_skew_s,
            "IDEMPOTENCY_KEEP_DAYS": self.idempotency_keep_days,
        } | self.extra


def load(overrides: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> dict[str, Any]:
    settings = Settings.from_env(environ)
    settings.validate()
    config = settings.flask_config()
    if overrides:
        config.update(overrides)
    return config
