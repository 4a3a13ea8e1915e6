"""Downloading a large file over HTTP(S) so that it survives a flaky network.

`download(url, dest)` streams into `dest + ".part"` with a progress bar (bytes, rate, ETA). A
dropped connection is retried with exponential backoff and *resumed* where it stopped (an HTTP
`Range` request; a server that ignores ranges is read again from the start). A `.part` is tied to
what it is a part of: `dest.part.json` records the URL, the size the server announced and its
validator (ETag or Last-Modified), a resume sends that validator as `If-Range` (a changed file
comes back whole), and a `.part` whose record names another URL or size is discarded, never
continued. The size is checked against what the server announced, `check` (e.g. every member of a
zip read through) runs on the finished `.part`, and only then is it renamed to `dest`: a file at
`dest` is always complete, so a finished download is reused and an interrupted one is never
mistaken for a finished one.

Plain `urllib` (the standard library) is all it needs, so the default path works after
`pip install mmkd` with nothing else to install.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.request
from typing import Callable

from tqdm.auto import tqdm

from mmkd.atomic import publish
from mmkd.errors import MMKDError

CHUNK = 1 << 20
USER_AGENT = "mmkd-downloader"
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(MMKDError):
    pass


class _Transient(Exception):
    """A failure worth retrying (connection dropped or refused, time-out, 5xx)."""


def _total_from(response, offset: int) -> int | None:
    """The full size of the file, from Content-Range (a 206) or Content-Length (a 200)."""
    content_range = response.headers.get("Content-Range", "")
    if "/" in content_range and not content_range.endswith("/*"):
        return int(content_range.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    if length is None:
        return None
    return int(length) + (offset if response.status == 206 else 0)


def _record(part: str) -> dict:
    try:
        with open(part + ".json") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _discard(part: str) -> None:
    for path in (part, part + ".json"):
        if os.path.exists(path):
            os.remove(path)


def _fetch_once(url: str, part: str, timeout: float, bar) -> None:
    """One attempt: continue `part` from its current size. Raises _Transient on what a retry may fix."""
    record = _record(part)
    if os.path.exists(part) and record.get("url") != url:      # a part of something else, or of unknown origin
        _discard(part)
        record = {}
    offset = os.path.getsize(part) if os.path.exists(part) else 0
    with _open(url, part, offset, record, timeout) as response:
        if offset and response.status != 206:   # the server ignored the range, or the file changed: from the start
            offset = 0
        total = _total_from(response, offset)
        if offset and record.get("total") is not None and total is not None and total != record["total"]:
            response.close()
            _discard(part)
            raise _Transient(f"the file changed upstream ({record['total']} bytes, now {total})")
        validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
        with open(part + ".json", "w") as f:
            json.dump({"url": url, "total": total, "validator": validator}, f)
        if bar is not None:
            bar.reset(total=total)
            bar.update(offset)
        _copy(response, url, part, offset, bar)
    size = os.path.getsize(part)
    if total is not None and size != total:   # the server closed the connection early
        raise _Transient(f"connection lost after {size} of {total} bytes")


def _open(url: str, part: str, offset: int, record: dict, timeout: float):
    """The response to a GET of `url` from byte `offset` (If-Range: the same file only)."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        if record.get("validator"):
            request.add_header("If-Range", record["validator"])
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:   # the range starts at or past the end: start again
            os.remove(part)
            raise _Transient(f"HTTP 416 for a resumed range at byte {offset}") from None
        if e.code in _TRANSIENT_STATUS:
            raise _Transient(f"HTTP {e.code} {e.reason}") from None
        hint = "check the URL (and opus_base_url)" if e.code == 404 else "check the URL and your access to it"
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}; {hint}") from None
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise _Transient(f"{reason}") from None


def _copy(response, url: str, part: str, offset: int, bar) -> None:
    """The response's body appended to `part` (written afresh from offset 0)."""
    try:
        out = open(part, "ab" if offset else "wb")
    except OSError as e:
        raise DownloadError(f"{url}: cannot write {part}: {e.strerror}") from None
    with out:
        while True:
            try:
                chunk = response.read(CHUNK)
            except (http.client.HTTPException, ConnectionError, socket.timeout) as e:
                raise _Transient(f"connection lost ({type(e).__name__})") from None
            if not chunk:
                break
            try:
                out.write(chunk)
            except OSError as e:
                raise DownloadError(f"{url}: cannot write {part}: {e.strerror}") from None
            if bar is not None:
                bar.update(len(chunk))


def download(url: str, dest: str, *, retries: int = 6, backoff: float = 1.0, timeout: float = 60.0,
             check: Callable[[str], None] | None = None, progress: bool = True, desc: str | None = None) -> str:
    """Fetch `url` into `dest` (reused when it already exists); returns `dest`.

    `retries` further attempts after the first, waiting backoff, 2·backoff, 4·backoff, ... seconds;
    each continues the partial file. `check(path)` may raise `DownloadError` to reject a finished
    download (it is then deleted, not kept looking complete)."""
    if os.path.isfile(dest):
        return dest
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    part = dest + ".part"
    bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=desc or f"download {os.path.basename(dest)}",
               disable=not progress, dynamic_ncols=True)
    try:
        for attempt in range(retries + 1):
            try:
                _fetch_once(url, part, timeout, bar)
                break
            except _Transient as e:
                if attempt == retries:
                    raise DownloadError(
                        f"{url}: {e}; gave up after {retries + 1} attempts. The partial file {part} is kept: "
                        "run the same command again to resume, or check the URL / your network") from None
                wait = backoff * 2 ** attempt
                bar.write(f"{url}: {e}; retrying in {wait:.1f}s (attempt {attempt + 2} of {retries + 1})")
                time.sleep(wait)
    finally:
        bar.close()
    if check is not None:
        try:
            check(part)
        except DownloadError:
            _discard(part)
            raise
    publish(part, dest)
    if os.path.exists(part + ".json"):
        os.remove(part + ".json")
    return dest
