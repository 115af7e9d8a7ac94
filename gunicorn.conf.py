import gc
import os
import sys

from limits import parse

from app.auth.limits import FAILED_LOGINS
from app.config import ConfigError, Settings, limits_counted_in_memory, listen_address, server_processes
from app.serving import install_json_errors

# Checked once here, in the master, so that a refused configuration is one line naming every problem rather than a
# traceback from each worker.
try:
    settings = Settings.from_env()
    settings.validate()
except ConfigError as exc:
    sys.exit(f"refusing to start: {exc}")

install_json_errors()

# A request's statement gives up before gunicorn's worker timeout would kill the worker (a 503 to try again, not a
# bare 500), and PostgreSQL ends a transaction a hung worker left open, releasing its locks. The workers read these
# when they build the app; the command line does not, so long jobs and checks keep no such bounds.
os.environ.setdefault("DB_STATEMENT_TIMEOUT_MS", "25000")
os.environ.setdefault("DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", "60000")

bind = listen_address()
workers, threads = server_processes()
worker_class = "gthread" if threads > 1 else "sync"
timeout = 30
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG", "-") or None  # empty: no access log
# The path without its query: queries carry residents' positions (?near=) and nicknames searched for (?q=).
access_log_format = '%(t)s %(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'
logger_class = "app.serving.AccessLogger"  # %(U)s as the client sent it: a %0A in a path cannot forge a log line
# Nothing here uses gunicorn's control interface, and its socket has one default path per user: a second server on
# the machine (the benchmark's beside `make run`) would fight over it.
control_socket_disable = True


def when_ready(server):
    if os.environ.get("MAKE_RUN_BANNER"):  # only once the address is bound: then it is this server's
        from app.banner import main as print_banner

        print_banner()
    elif hazards := settings.hazards():  # APP_ENV left out of a server's environment, most likely
        server.log.warning(
            "APP_ENV=%s: %s. Not fit to serve residents: set APP_ENV=production.", settings.env, "; ".join(hazards)
        )
    if workers > 1 and limits_counted_in_memory():
        allowed = parse(FAILED_LOGINS).amount
        server.log.warning(
            "%d worker processes count the rate limits each in its own memory: a username locks after up to %d wrong "
            "passwords, not %d. Set REDIS_URL, or leave WEB_CONCURRENCY unset for one process.",
            workers,
            allowed * workers,
            allowed,
        )


# Before it serves the next request on a kept-alive connection, a gthread worker drains what the app left unread of
# a body, up to 64 KiB; past that it closes the connection. A body the app refuses unread (413, over
# MAX_CONTENT_LENGTH) can be longer: the answer must then say Connection: close, which gunicorn sends only when it
# decided the close itself (an app's own Connection header is hop-by-hop, and dropped). A chunked body's length is
# unknown beforehand.
DRAINED_AT_MOST = 64 * 1024  # gunicorn.http.parser._DRAIN_MAX_BYTES (a test compares them); the app's limit is apart


def pre_request(worker, req):
    for name, value in req.headers:
        if name == "TRANSFER-ENCODING" or (name == "CONTENT-LENGTH" and int(value) > DRAINED_AT_MOST):
            req.must_close = True


def post_worker_init(worker):
    # The loaded app (modules, schemas, compiled statements, the OpenAPI document) lives as long as the worker. Left to
    # the collector, a full collection walked all of it: 150-230 ms, in all four benchmark workers at once.
    gc.freeze()
