"""gunicorn settings for the example: one gevent worker per process.

    cd example_project
    gunicorn -c gunicorn.conf.py --no-control-socket -b 127.0.0.1:8000 example_project.wsgi

The gevent worker monkey patches the standard library before it imports
``example_project.wsgi`` (which calls ``autopool.install()``), so autopool's
pools are built with gevent's locks. Nothing here imports autopool or Django
in the master process.
"""
import os

worker_class = "gevent"
worker_connections = 1000
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
bind = os.environ.get("EXAMPLE_BIND", "127.0.0.1:8000")
graceful_timeout = 10
keepalive = 5
accesslog = None
errorlog = "-"
loglevel = os.environ.get("EXAMPLE_LOG_LEVEL", "warning")
# gunicorn 27's control socket is disabled with --no-control-socket on the command line.


def worker_exit(server, worker):
    """Close this worker's pooled connections when it stops (graceful shutdown)."""
    import autopool

    closed = autopool.dispose()
    server.log.info("autopool: disposed %d pool(s) of worker %s", closed, worker.pid)
