import os

from limits import parse

from app.auth.limits import FAILED_LOGINS
from app.config import limits_counted_in_memory, listen_address, server_processes
from app.serving import install_json_errors

install_json_errors()

bind = listen_address()
workers, threads = server_processes()
worker_class = "gthread" if threads > 1 else "sync"
timeout = 30
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG", "-") or None  # empty: no access log
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'
# Nothing here uses gunicorn's control interface, and its socket has one default path per user: a second server on
# the machine (the benchmark's beside `make run`) would fight over it.
control_socket_disable = True


def when_ready(server):
    if workers > 1 and limits_counted_in_memory():
        allowed = parse(FAILED_LOGINS).amount
        server.log.warning(
            "%d worker processes count the rate limits each in its own memory: a username locks after up to %d wrong "
            "passwords, not %d. Set REDIS_URL, or leave WEB_CONCURRENCY unset for one process.",
            workers,
            allowed * workers,
            allowed,
        )
