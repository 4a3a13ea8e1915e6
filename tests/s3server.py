"""An S3-compatible server on 127.0.0.1 (moto's server mode, in a thread of the test process) that
counts the bytes of every object it serves, and the fsspec settings that point s3fs at it."""

from __future__ import annotations

import collections
import contextlib
import threading

from werkzeug.serving import make_server

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


class _Counting:
    """WSGI middleware: bytes of GET response bodies per path ('/bucket/key')."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()
        self.served: collections.Counter = collections.Counter()
        self.gets: collections.Counter = collections.Counter()

    def __call__(self, environ, start_response):
        body = self.app(environ, start_response)
        if environ["REQUEST_METHOD"] != "GET":
            return body
        path = environ.get("PATH_INFO", "")

        def counted():
            try:
                for chunk in body:
                    with self.lock:
                        self.served[path] += len(chunk)
                    yield chunk
            finally:
                if hasattr(body, "close"):
                    body.close()
        with self.lock:
            self.gets[path] += 1
        return counted()

    def reset(self) -> None:
        with self.lock:
            self.served.clear()
            self.gets.clear()


class S3Server:
    def __init__(self):
        from moto.server import DomainDispatcherApplication, create_backend_app

        self.counting = _Counting(DomainDispatcherApplication(create_backend_app))
        self.server = make_server("127.0.0.1", 0, self.counting, threaded=True)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def env(self) -> dict[str, str]:
        """What a child process needs to reach the server through s3fs (fsspec reads FSSPEC_S3_*)."""
        return {**CREDENTIALS, "FSSPEC_S3_ENDPOINT_URL": self.endpoint, "AWS_ENDPOINT_URL": self.endpoint}

    def served(self, prefix: str) -> int:
        """Bytes served of objects whose path starts with `prefix` ('/bucket/cache/shards/')."""
        with self.counting.lock:
            return sum(n for p, n in self.counting.served.items() if p.startswith(prefix))


@contextlib.contextmanager
def s3_server(monkeypatch):
    """The server, with this process's fsspec pointed at it; yields it."""
    import fsspec.config

    import urllib.request

    srv = S3Server()
    srv.thread.start()
    # moto keeps its buckets per process, across servers: start each test from an empty store.
    urllib.request.urlopen(urllib.request.Request(f"{srv.endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    for k, v in srv.env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setitem(fsspec.config.conf, "s3", {"endpoint_url": srv.endpoint})
    try:
        import s3fs
        s3fs.S3FileSystem.clear_instance_cache()
        yield srv
    finally:
        srv.server.shutdown()
        s3fs.S3FileSystem.clear_instance_cache()
