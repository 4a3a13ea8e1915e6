"""A file server on 127.0.0.1 for download tests, and an OPUS-layout mirror built from the shared
samples. The server supports HTTP Range requests, can drop the connection half-way through a file
the first time it is asked for it, and records every request."""

from __future__ import annotations

import contextlib
import http.server
import os
import threading
import zipfile
from pathlib import Path

from mmkd.corpus_sources import PAPER_PAIRS, OpusRef


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, *args):   # keep test output clean
        pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        path = srv.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start, status = 0, 200
        wanted = self.headers.get("Range")
        if wanted and srv.ranges:
            start = int(wanted.split("=", 1)[1].split("-", 1)[0])
            if start >= len(data):
                self.send_error(416, "Range Not Satisfiable")
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Accept-Ranges", "bytes" if srv.ranges else "none")
        self.end_headers()
        body = data[start:]
        if self.path in srv.drop_once:
            srv.drop_once.discard(self.path)
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)   # the connection dies half-way through the body
            return
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, ranges: bool):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root, self.ranges = root, ranges
        self.requests: list[tuple[str, str | None]] = []
        self.drop_once: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextlib.contextmanager
def serve(root: Path, ranges: bool = True):
    """Serve `root` on 127.0.0.1 (a free port) for the duration of the block."""
    server = _Server(Path(root), ranges)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# Shared sample files holding each paper language (NTREX-128: news, 1,997 lines, multi-way parallel).
NTREX = {"ar": "arb", "bg": "bul", "de": "deu", "es": "spa", "fr": "fra", "hi": "hin", "zh": "zho_Hans"}


def opus_zip(path: Path, ref: OpusRef, english: list[str], other: list[str]) -> Path:
    """A Moses zip as OPUS serves it: members `{Corpus}.{a-b}.{a}` and `{Corpus}.{a-b}.{b}`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(ref.member("en"), "".join(f"{line}\n" for line in english))
        zf.writestr(ref.member(ref.lang), "".join(f"{line}\n" for line in other))
        zf.writestr("README", "test mirror\n")
    return path


def opus_mirror(root: Path, shared: Path, lines: int = 60) -> Path:
    """The paper's OPUS zips for all seven pairs, laid out like the OPUS object store, each holding
    `lines` real NTREX-128 sentence pairs (a pair with two corpora gets two disjoint slices)."""
    ntrex = shared / "parallel" / "ntrex128"
    english = (ntrex / "newstest2019-src.eng.txt").read_text(encoding="utf-8").splitlines()
    for pair, refs in PAPER_PAIRS.items():
        lang = pair.split("-")[1]
        other = (ntrex / f"newstest2019-ref.{NTREX[lang]}.txt").read_text(encoding="utf-8").splitlines()
        for i, (corpus, release) in enumerate(refs):
            ref = OpusRef(corpus, release, lang)
            url_path = ref.url("").lstrip("/")
            sl = slice(i * lines, (i + 1) * lines)
            opus_zip(root / url_path, ref, english[sl], other[sl])
    return root


__all__ = ["serve", "opus_zip", "opus_mirror", "NTREX"]
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
