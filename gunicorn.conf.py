import multiprocessing
import os

from app.config import listen_address
from app.serving import install_json_errors

install_json_errors()

bind = listen_address()
workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2))
threads = int(os.environ.get("GUNICORN_THREADS", "1"))
worker_class = "gthread" if threads > 1 else "sync"
timeout = 30
keepalive = 5
accesslog = os.environ.get("ACCESS_LOG", "-") or None  # empty: no access log
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(L)ss rid=%({x-request-id}o)s'
# Nothing here uses gunicorn's control interface, and its socket has one default path per user: a second server on
# the machine (the benchmark's beside `make run`) would fight over it.
control_socket_disable = True
