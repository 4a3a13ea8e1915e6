"""Downloads over real HTTP, from a server the test starts on 127.0.0.1: the default OPUS path,
resume after a dropped connection, retries, and the failures a user meets (404, refused, not a zip)."""

from __future__ import annotations

import socket
import zipfile

import pytest
from click.testing import CliRunner

from mmkd.cli import main
from mmkd.corpus import CorpusConfig, open_corpus, prepare_corpus
from mmkd.corpus_sources import OpusRef
from mmkd.download import DownloadError, download

from loopback import opus_mirror, opus_zip, serve


@pytest.fixture(scope="module")
def mirror(tmp_path_factory, shared):
    return opus_mirror(tmp_path_factory.mktemp("opus"), shared, lines=400)


def test_default_opus_path_downloads_over_http_and_reuses_the_file(tmp_path, mirror, shared):
    with serve(mirror) as server:
        cfg = CorpusConfig(pair="en-de", data_dir=str(tmp_path / "d"), opus_base_url=server.url)
        corpus = open_corpus(str(prepare_corpus(cfg, progress=False)))
        assert server.requests == [("/OPUS-Europarl/v8/moses/de-en.txt.zip", None)]
        dest = tmp_path / "d" / "downloads" / "Europarl-v8-de-en.txt.zip"
        assert dest.read_bytes() == (mirror / "OPUS-Europarl/v8/moses/de-en.txt.zip").read_bytes()
        assert not list((tmp_path / "d" / "downloads").glob("*.part"))
        assert corpus.meta["sources"] == ["opus:Europarl/v8"] and 300 < len(corpus) <= 400
        prepare_corpus(cfg, progress=False, overwrite=True)   # a complete download is reused, not fetched again
        assert len(server.requests) == 1


def test_mirror_from_the_environment(tmp_path, mirror, monkeypatch):
    with serve(mirror) as server:
        monkeypatch.setenv("MMKD_OPUS_BASE_URL", server.url)
        r = CliRunner().invoke(main, ["corpus", "prepare", "en-hi", "--data-dir", str(tmp_path / "d"), "--quiet"])
        assert r.exit_code == 0, r.output
        assert server.requests == [("/OPUS-IITB/v2.0/moses/en-hi.txt.zip", None)]


def test_dropped_connection_is_resumed_byte_exact(tmp_path, mirror):
    path = "/OPUS-MultiUN/v1/moses/ar-en.txt.zip"
    want = (mirror / path.lstrip("/")).read_bytes()
    with serve(mirror) as server:
        server.drop_once.add(path)
        dest = download(server.url + path, str(tmp_path / "f.zip"), backoff=0.01, progress=False)
        assert open(dest, "rb").read() == want
        # First request from byte 0, dropped half-way; the retry asks for the rest only.
        assert server.requests[0] == (path, None)
        assert server.requests[1][1] == f"bytes={len(want) // 2}-"
        assert len(server.requests) == 2


def test_server_without_ranges_is_read_again_from_the_start(tmp_path, mirror):
    path = "/OPUS-MultiUN/v1/moses/en-zh.txt.zip"
    want = (mirror / path.lstrip("/")).read_bytes()
    with serve(mirror, ranges=False) as server:
        server.drop_once.add(path)
        dest = download(server.url + path, str(tmp_path / "f.zip"), backoff=0.01, progress=False)
        assert open(dest, "rb").read() == want and len(server.requests) == 2


def test_interrupted_run_leaves_a_part_file_that_the_next_run_continues(tmp_path, mirror):
    path = "/OPUS-Europarl/v8/moses/en-fr.txt.zip"
    want = (mirror / path.lstrip("/")).read_bytes()
    dest = tmp_path / "f.zip"
    with serve(mirror) as server:
        server.drop_once.add(path)
        with pytest.raises(DownloadError, match=r"gave up after 1 attempts.*run the same command again to resume"):
            download(server.url + path, str(dest), retries=0, progress=False)
        assert not dest.exists()
        assert (tmp_path / "f.zip.part").stat().st_size == len(want) // 2
        download(server.url + path, str(dest), progress=False)
        assert dest.read_bytes() == want and server.requests[-1][1] == f"bytes={len(want) // 2}-"
        assert not (tmp_path / "f.zip.part").exists()


def test_404_is_one_clear_line_and_exit_2(tmp_path, mirror):
    with serve(mirror) as server:
        r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--data-dir", str(tmp_path / "d"),
                                      "--opus-base-url", server.url + "/nothing-here", "--quiet"])
    assert r.exit_code == 2
    line = r.output.strip()
    assert line == (f"error: {server.url}/nothing-here/OPUS-Europarl/v8/moses/en-fr.txt.zip: HTTP 404 Not Found; "
                    "check the URL (and opus_base_url)")
    assert not (tmp_path / "d" / "corpora" / "en-fr").exists()
    assert not list((tmp_path / "d").rglob("*.zip"))


def test_refused_connection_is_retried_then_named(tmp_path):
    with socket.socket() as s:      # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DownloadError, match=rf"^{url}: .*refused.*; gave up after 3 attempts"):
        download(url, str(tmp_path / "x.zip"), retries=2, backoff=0.01, progress=False)
    assert not (tmp_path / "x.zip").exists()


def test_not_a_zip_is_refused_and_not_kept(tmp_path):
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "page.zip").write_text("<!DOCTYPE html><html>maintenance</html>")
    truncated = (tmp_path / "srv" / "cut.zip")
    opus_zip(tmp_path / "whole.zip", OpusRef("Europarl", "v8", "fr"), ["a b c"] * 50, ["x y z"] * 50)
    truncated.write_bytes((tmp_path / "whole.zip").read_bytes()[:-40])
    with serve(tmp_path / "srv") as server:
        for name, what in (("page.zip", "an HTML page"), ("cut.zip", "not a zip file")):
            r = CliRunner().invoke(main, ["corpus", "prepare", "en-fr", "--zip", f"{server.url}/{name}",
                                          "--data-dir", str(tmp_path / "d"), "--quiet"])
            assert r.exit_code == 2, r.output
            assert r.output.startswith(f"error: {server.url}/{name}: the server sent {what}")
            assert len(r.output.strip().splitlines()) == 1
    assert not list((tmp_path / "d").rglob("*.zip*"))


def test_zip_url_option_downloads_into_downloads(tmp_path, mirror):
    with serve(mirror) as server:
        url = f"{server.url}/OPUS-Europarl/v8/moses/en-es.txt.zip"
        cfg = CorpusConfig(pair="en-es", zip=url, data_dir=str(tmp_path / "d"))
        corpus = open_corpus(str(prepare_corpus(cfg, progress=False)))
    assert zipfile.is_zipfile(tmp_path / "d" / "downloads" / "en-es.txt.zip")
    assert corpus.meta["sources"] == [f"zip:{url}"] and len(corpus) > 300
