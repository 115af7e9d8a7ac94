"""app.config: the environment, parsed and checked, with no Flask app needed."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app import config
from app.config import ConfigError, Settings, database_url, load

PRODUCTION_SECRETS = {
    "APP_ENV": "production",
    "SECRET_KEY": "prod-secret-key-0123456789abcdefgh",
    "JWT_SECRET_KEY": "prod-jwt-secret-key-0123456789abcdef",
    "QR_SECRET": "prod-qr-secret-0123456789abcdefghij",
    "WECHAT_APPID": "wx-prod",
    "WECHAT_SECRET": "wx-prod-secret",
    "PUBLIC_BASE_URL": "https://tanpuhui.example.cn/",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "DATABASE_URL": "postgresql://tanpuhui@db.internal:5432/tanpuhui",
}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("postgres://u:p@db:5432/points", "postgresql+psycopg://u:p@db:5432/points"),
        ("postgresql://u@db/points", "postgresql+psycopg://u@db/points"),
        ("postgresql://postgres@127.0.0.1:5432/test", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        ("postgresql+psycopg://u@db/points", "postgresql+psycopg://u@db/points"),
        ("sqlite:////var/lib/points.db", "sqlite:////var/lib/points.db"),
    ],
)
def test_database_url_normalises_postgres(raw, expected):
    assert database_url(raw) == expected
    assert Settings.from_env({"DATABASE_URL": raw}).database_url == expected


@pytest.mark.parametrize("raw", [None, ""])
def test_default_database_is_sqlite_under_instance(raw):
    url = database_url(raw)
    assert url == f"sqlite:///{config.INSTANCE_DIR / 'tanpuhui.db'}"
    assert config.INSTANCE_DIR.name == "instance"
    assert config.INSTANCE_DIR.is_dir()
    assert Settings.from_env({}).database_url == url


def test_defaults_outside_production():
    settings = Settings.from_env({})
    settings.validate()
    assert settings.env == "development"
    assert settings.wechat_mode == "stub"
    assert settings.timezone == "Asia/Shanghai"
    assert settings.ratelimit_enabled is True
    assert settings.redis_url is None
    flask = settings.flask_config()
    assert flask["MAX_CONTENT_LENGTH"] == 64 * 1024
    assert flask["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=15)
    assert flask["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=30)
    assert flask["RATELIMIT_STORAGE_URI"] == "memory://"
    assert flask["WECHAT_API_BASE"] == "https://api.weixin.qq.com"


def test_values_are_read_from_the_environment():
    settings = Settings.from_env(
        {
            "ACCESS_TOKEN_MINUTES": "5",
            "REFRESH_TOKEN_DAYS": "7",
            "REDIS_URL": "redis://cache:6379/0",
            "WECHAT_API_BASE": "http://fake-wechat:8080/",
            "TIMEZONE": "UTC",
        }
    )
    flask = settings.flask_config()
    assert flask["JWT_ACCESS_TOKEN_EXPIRES"] == timedelta(minutes=5)
    assert flask["JWT_REFRESH_TOKEN_EXPIRES"] == timedelta(days=7)
    assert flask["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/0"
    assert flask["WECHAT_API_BASE"] == "http://fake-wechat:8080"
    assert flask["TIMEZONE"] == "UTC"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("false", False),
        ("False", False),
        ("0", False),
        ("no", False),
        ("off", False),
        ("true", True),
        ("1", True),
        (" YES ", True),
        ("on", True),
        ("", True),
    ],
)
def test_ratelimit_enabled_is_parsed(raw, expected):
    settings = Settings.from_env({"RATELIMIT_ENABLED": raw})
    assert settings.ratelimit_enabled is expected
    assert settings.flask_config()["RATELIMIT_ENABLED"] is expected


def test_production_refuses_every_default_secret_by_name():
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"APP_ENV": "production", "WECHAT_APPID": "wx", "WECHAT_SECRET": "s"})
    message = str(excinfo.value)
    for name in ("SECRET_KEY", "JWT_SECRET_KEY", "QR_SECRET"):
        assert name in message


@pytest.mark.parametrize("left_default", ["SECRET_KEY", "JWT_SECRET_KEY", "QR_SECRET"])
def test_production_names_only_the_default_secret_left(left_default):
    environ = {k: v for k, v in PRODUCTION_SECRETS.items() if k != left_default}
    with pytest.raises(ConfigError) as excinfo:
        load(environ=environ)
    message = str(excinfo.value)
    assert left_default in message
    others = {"SECRET_KEY", "JWT_SECRET_KEY", "QR_SECRET"} - {left_default}
    # JWT_SECRET_KEY contains SECRET_KEY, so look for whole names in the listed part only
    listed = {name.strip() for name in message.split(":", 1)[1].split(",")}
    assert listed == {left_default}
    assert not others & listed


def test_production_with_real_secrets_loads():
    flask = load(environ=PRODUCTION_SECRETS)
    assert flask["APP_ENV"] == "production"
    assert flask["WECHAT_MODE"] == "real"
    assert flask["SECRET_KEY"] == PRODUCTION_SECRETS["SECRET_KEY"]
    assert flask["SQLALCHEMY_ENGINE_OPTIONS"]["hide_parameters"] is True  # no openids or hashes in error logs


@pytest.mark.parametrize("name", ["SECRET_KEY", "JWT_SECRET_KEY", "QR_SECRET"])
def test_production_reads_an_empty_secret_as_unset(name):
    with pytest.raises(ConfigError, match=rf"default secrets: {name}$"):
        load(environ={**PRODUCTION_SECRETS, name: ""})


def test_production_refuses_secrets_short_enough_to_guess():
    environ = {**PRODUCTION_SECRETS, "SECRET_KEY": "a", "QR_SECRET": "x" * 31}
    with pytest.raises(ConfigError, match=r"at least 32 characters: SECRET_KEY, QR_SECRET$"):
        load(environ=environ)
    assert load(environ={**environ, "SECRET_KEY": "s" * 32, "QR_SECRET": "q" * 32})["QR_SECRET"] == "q" * 32


def test_production_refuses_one_secret_used_for_two_purposes():
    """Whoever learns the QR key would then sign sessions and tokens too."""
    same = "s" * 40
    with pytest.raises(ConfigError, match=r"a different value for each of SECRET_KEY, JWT_SECRET_KEY, QR_SECRET$"):
        load(environ={**PRODUCTION_SECRETS, "SECRET_KEY": same, "QR_SECRET": same})


@pytest.mark.parametrize("env", ["prod", "Prod", "staging", "dev"])
def test_an_unknown_app_env_is_refused_not_read_as_development(env):
    # APP_ENV=prod must not start with stub logins and the development secrets
    with pytest.raises(ConfigError, match="APP_ENV must be one of development, test, production"):
        load(environ={**PRODUCTION_SECRETS, "APP_ENV": env})


def test_app_env_is_read_whatever_its_case():
    assert load(environ={**PRODUCTION_SECRETS, "APP_ENV": "PRODUCTION"})["APP_ENV"] == "production"
    with pytest.raises(ConfigError, match="WECHAT_APPID"):
        load(environ={"APP_ENV": " Production", "SECRET_KEY": "x" * 40})


def test_every_production_problem_is_named_at_once():
    with pytest.raises(ConfigError) as excinfo:
        load(environ={"APP_ENV": "production", "TIMEZONE": "Mars/Base", "WECHAT_MODE": "stub"})
    assert str(excinfo.value).split("; ") == [
        "TIMEZONE 'Mars/Base' is not a known zone",
        "production refuses default secrets: SECRET_KEY, JWT_SECRET_KEY, QR_SECRET",
        "production refuses WECHAT_MODE=stub",
        "production needs WECHAT_APPID and WECHAT_SECRET",
        "production needs PUBLIC_BASE_URL: poster QR codes are printed with it",
        "production needs REDIS_URL for its rate limits: in memory, each worker would count its own "
        "(or set RATELIMIT_ENABLED=false)",
        "production needs DATABASE_URL=postgresql://…: without it the server would open a SQLite file",
    ]


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "Asia/Shanghai2", "../etc/passwd", ""])
def test_bad_timezone_is_refused(zone):
    with pytest.raises(ConfigError, match="TIMEZONE"):
        load(environ={"TIMEZONE": zone})


@pytest.mark.parametrize("mode", ["prod", "Stub", "fake"])
def test_unknown_wechat_mode_is_refused(mode):
    with pytest.raises(ConfigError, match="WECHAT_MODE"):
        load(environ={"WECHAT_MODE": mode})


def test_overrides_win_over_the_environment():
    flask = load({"RATELIMIT_ENABLED": True, "TESTING": True}, environ={"RATELIMIT_ENABLED": "false"})
    assert flask["RATELIMIT_ENABLED"] is True
    assert flask["TESTING"] is True


def test_postgres_gets_a_bigger_pool_than_sqlite():
    pg = Settings.from_env({"DATABASE_URL": "postgres://u@db/points"}).flask_config()
    sqlite = Settings.from_env({"DATABASE_URL": "sqlite:///x.db"}).flask_config()
    assert pg["SQLALCHEMY_ENGINE_OPTIONS"]["pool_size"] >= 10
    assert "pool_size" not in sqlite["SQLALCHEMY_ENGINE_OPTIONS"]


def test_postgres_connections_are_bounded_on_the_client_side_too():
    """A host that accepts and never answers, or one gone silent, is noticed in seconds, not at the worker's kill."""
    args = Settings.from_env({"DATABASE_URL": "postgres://u@db/points"}).flask_config()["SQLALCHEMY_ENGINE_OPTIONS"]
    connect = args["connect_args"]
    assert (connect["connect_timeout"], connect["keepalives"], connect["tcp_user_timeout"]) == (3, 1, 10_000)
    assert connect["options"].startswith("-c lock_timeout=5000 ")
    slow = Settings.from_env({"DATABASE_URL": "postgres://u@db/points", "DB_CONNECT_TIMEOUT_SECONDS": "10"})
    assert slow.pg_connect_args()["connect_timeout"] == 10


@pytest.mark.parametrize(
    ("name", "value"),
    [("ACCESS_TOKEN_MINUTES", "fifteen"), ("WECHAT_TIMEOUT", "5s"), ("POINTS_PER_KG_CO2E", "1.5")],
)
def test_a_bad_number_names_its_setting(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [("IDEMPOTENCY_KEEP_DAYS", "0"), ("IDEMPOTENCY_KEEP_DAYS", "1000000"), ("ACCESS_TOKEN_MINUTES", "-5"),
     ("MEMBER_CODE_TTL_SECONDS", "0"), ("DEVICE_CLOCK_SKEW_SECONDS", "86400"), ("WECHAT_TIMEOUT", "0")],
)  # fmt: skip
def test_a_number_out_of_its_range_names_its_setting(name, value):
    with pytest.raises(ConfigError, match=f"{name} must be from"):
        Settings.from_env({name: value})


def test_the_ranges_admit_the_defaults_and_the_benchmarks_settings():
    settings = Settings.from_env({"MEMBER_CODE_TTL_SECONDS": "3600", "ACCESS_TOKEN_MINUTES": "240"})
    assert (settings.member_code_ttl_s, settings.access_minutes, settings.idempotency_keep_days) == (3600, 240, 30)


def test_an_unclear_switch_is_refused_not_guessed():
    with pytest.raises(ConfigError, match="RATELIMIT_ENABLED"):
        Settings.from_env({"RATELIMIT_ENABLED": "enabled"})


def test_production_counts_rate_limits_in_redis_or_not_at_all():
    environ = {k: v for k, v in PRODUCTION_SECRETS.items() if k != "REDIS_URL"}
    with pytest.raises(ConfigError, match="REDIS_URL"):
        load(environ=environ)
    assert load(environ={**environ, "RATELIMIT_ENABLED": "false"})["RATELIMIT_ENABLED"] is False
    assert load(environ=PRODUCTION_SECRETS)["RATELIMIT_STORAGE_URI"] == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, (1, 8)),  # limits in this process's memory: one process, so that they are the whole server's
        ({"REDIS_URL": "redis://127.0.0.1:6379/0"}, (2 * 3, 1)),
        ({"RATELIMIT_ENABLED": "false"}, (2 * 3, 1)),
        ({"WEB_CONCURRENCY": "4", "GUNICORN_THREADS": "2"}, (4, 2)),  # said outright: as said
        ({"REDIS_URL": "redis://r", "WEB_CONCURRENCY": "3"}, (3, 1)),
    ],
)
def test_gunicorn_runs_one_process_while_rate_limits_count_in_memory(monkeypatch, environ, expected):
    monkeypatch.setattr(config, "_cores", lambda: 3)
    assert config.server_processes(environ) == expected
    shared_or_off = bool({"REDIS_URL", "RATELIMIT_ENABLED"} & environ.keys())
    assert config.limits_counted_in_memory(environ) is not shared_or_off


def test_an_unknown_core_count_still_gives_gunicorn_workers(monkeypatch):
    monkeypatch.delattr(config.os, "sched_getaffinity", raising=False)  # not on Linux
    monkeypatch.setattr(config.os, "cpu_count", lambda: None)  # os.cpu_count() may not know
    assert config.server_processes({"REDIS_URL": "redis://r"}) == (2, 1)


def test_a_big_host_gets_as_many_workers_as_allowed_not_a_refusal(monkeypatch):
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: set(range(48)))
    assert config.server_processes({"REDIS_URL": "redis://r"}) == (64, 1)
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda pid: {0, 1})  # a container's two cores of 48
    monkeypatch.setattr(config.os, "cpu_count", lambda: 48)
    assert config.server_processes({"REDIS_URL": "redis://r"}) == (4, 1)


@pytest.mark.parametrize(
    ("name", "value"), [("WEB_CONCURRENCY", "0"), ("WEB_CONCURRENCY", "four"), ("GUNICORN_THREADS", "-1")]
)
def test_a_bad_process_count_names_its_setting(name, value):
    with pytest.raises(ConfigError, match=name):
        config.server_processes({name: value})


def test_production_needs_the_public_address_posters_are_printed_with():
    environ = {k: v for k, v in PRODUCTION_SECRETS.items() if k != "PUBLIC_BASE_URL"}
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        load(environ=environ)
    assert load(environ=PRODUCTION_SECRETS)["PUBLIC_BASE_URL"] == "https://tanpuhui.example.cn"


@pytest.mark.parametrize(
    "url",
    ["http://tanpuhui.example.cn", "tanpuhui.example.cn", "https://", "https:///q", "HTTPS://tanpuhui.example.cn",
     "https://tanpuhui.example.cn/?", "https://tanpuhui.example.cn/#", "https://tanpu hui.example.cn"],
)  # fmt: skip
def test_production_needs_an_https_public_address(url):
    # posters are printed with it, and the admin cookie is Secure only over https
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL"):
        load(environ={**PRODUCTION_SECRETS, "PUBLIC_BASE_URL": url})


@pytest.mark.parametrize("url", ["tanpuhui.example.cn", "ftp://x.cn", "http://x.cn/?a=1", "http://x.cn/#q"])
def test_a_public_address_that_no_phone_could_open_is_refused_anywhere(url):
    with pytest.raises(ConfigError, match="PUBLIC_BASE_URL must be an address"):
        load(environ={"PUBLIC_BASE_URL": url})
    assert load(environ={"PUBLIC_BASE_URL": "http://192.168.1.5:5000/green"})["PUBLIC_BASE_URL"] == (
        "http://192.168.1.5:5000/green"
    )


def test_outside_production_poster_links_follow_the_listening_address():
    assert load(environ={})["PUBLIC_BASE_URL"] == "http://127.0.0.1:5000"
    assert load(environ={"BIND": "127.0.0.1:5079"})["PUBLIC_BASE_URL"] == "http://127.0.0.1:5079"
    assert load(environ={"BIND": "127.0.0.1:5079", "PUBLIC_BASE_URL": "http://10.0.0.2/"})["PUBLIC_BASE_URL"] == (
        "http://10.0.0.2"
    )


@pytest.mark.parametrize(("hops", "seen"), [(None, "10.0.0.9"), ("1", "203.0.113.7")])
def test_the_client_address_comes_from_the_trusted_proxy_only_when_configured(tmp_path, monkeypatch, hops, seen):
    from flask import request

    from app import create_app

    if hops:
        monkeypatch.setenv("PROXY_HOPS", hops)
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/proxy.db"})
    app.add_url_rule("/_probe", "probe", lambda: f"{request.remote_addr} {request.scheme}")
    headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7", "X-Forwarded-Proto": "https"}
    answer = app.test_client().get("/_probe", headers=headers, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    # one hop: the address the proxy itself appended, never one the client wrote in front of it
    assert answer.get_data(as_text=True) == f"{seen} {'https' if hops else 'http'}"


@pytest.mark.parametrize("url", [None, "sqlite:////var/lib/points.db"])
def test_production_runs_on_postgresql_only(url):
    environ = {k: v for k, v in PRODUCTION_SECRETS.items() if k != "DATABASE_URL"}
    if url:
        environ["DATABASE_URL"] = url
    with pytest.raises(ConfigError, match=r"production needs DATABASE_URL=postgresql://…: without it"):
        load(environ=environ)
    assert load(environ={**environ, "DATABASE_URL": "postgres://u@db/points"})["SQLALCHEMY_DATABASE_URI"].startswith(
        "postgresql+psycopg://"
    )


def test_production_sends_the_wechat_secret_over_https_only():
    with pytest.raises(ConfigError, match="https:// WECHAT_API_BASE"):
        load(environ={**PRODUCTION_SECRETS, "WECHAT_API_BASE": "http://wechat.internal"})
    assert load(environ={"WECHAT_API_BASE": "http://fake:8080"})["WECHAT_API_BASE"] == "http://fake:8080"  # tests


@pytest.mark.parametrize("url", ["cache.internal:6379", "http://cache:6379", "memcached://cache", "unix:///r.sock"])
def test_a_redis_url_the_limits_cannot_open_is_refused_in_one_line(url):
    with pytest.raises(ConfigError, match=r"REDIS_URL must start with redis://, rediss://, redis\+unix://"):
        load(environ={"REDIS_URL": url})


@pytest.mark.parametrize("url", ["rediss://cache:6380/0", "redis+unix:///run/redis.sock", "redis://:pw@cache/1"])
def test_a_redis_url_the_limits_can_open_is_taken(url):
    assert load(environ={"REDIS_URL": url})["RATELIMIT_STORAGE_URI"] == url
