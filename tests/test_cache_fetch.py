"""A cache in object storage (#32): a real S3-compatible server (moto's server mode) on 127.0.0.1,
read through s3fs, each shard fetched once per node into --cache-local, checked against the
manifest's sha256 before it is used, within a size limit."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs", reason="object-store tests need s3fs (pip install -e '.[dev]')")
pytest.importorskip("moto", reason="object-store tests need moto[server] (pip install -e '.[dev]')")

from s3server import s3_server  # noqa: E402

from mmkd.cache.reader import TeacherCache  # noqa: E402
from mmkd.errors import CacheError  # noqa: E402

URL = "s3://mmkd-test/cache"
SHARDS = "/mmkd-test/cache/shards/"


def _shard_bytes(cache: Path) -> int:
    manifest = json.loads((cache / "manifest.json").read_text())
    return sum(sum(s["bytes"].values()) + (cache / "shards" / s["name"] / "shard.json").stat().st_size
               for s in manifest["shards"])


@pytest.fixture
def store(monkeypatch, clean_cache):
    import s3fs

    with s3_server(monkeypatch) as srv:
        fs = s3fs.S3FileSystem()
        fs.mkdir("mmkd-test")
        fs.put(str(clean_cache / "en-fr"), "mmkd-test/cache", recursive=True)
        srv.counting.reset()
        yield srv, fs


def _read_all(url: str, local: str, env: dict, start, out) -> None:
    """One process of a node: wait for the others, then read every pair (a spawned process)."""
    os.environ.update(env)
    start.wait()
    try:
        cache = TeacherCache(url, local=local)
        batch = cache.get(np.arange(len(cache)))
        out.put((batch.word_states.sum().item(), batch.cls.sum().item(), cache.fetcher.fetched_bytes))
    except Exception as e:  # noqa: BLE001 - reported to the test, which fails on it
        out.put(repr(e))


def test_each_shard_is_fetched_once_per_node_and_reads_equal_the_local_cache(store, clean_cache, tmp_path):
    srv, _ = store
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(4), ctx.Queue()
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    procs = [ctx.Process(target=_read_all, args=(URL, str(node), srv.env, start, out)) for node in nodes for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    assert all(isinstance(r, tuple) for r in results), results
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    local = TeacherCache(str(clean_cache / "en-fr"))
    want = local.get(np.arange(len(local)))
    for words, cls, _ in results:
        assert words == pytest.approx(want.word_states.sum().item(), rel=1e-6)
        assert cls == pytest.approx(want.cls.sum().item(), rel=1e-6)
    total = _shard_bytes(clean_cache / "en-fr")
    # Four processes on two nodes: the store served every shard file exactly twice, once per node.
    assert srv.served(SHARDS) == 2 * total
    assert sum(r[2] for r in results) == 2 * total
    for node in nodes:
        (copy,) = [d for d in node.iterdir() if d.is_dir()]
        assert sorted(p.stem for p in (copy / "fetched").glob("*.json")) == [f"{k:05d}" for k in range(5)]
        assert json.loads((copy / "manifest.json").read_text()) == json.loads((clean_cache / "en-fr" / "manifest.json").read_text())


def test_a_corrupt_object_is_refused_in_one_line_and_nothing_of_its_shard_is_kept(store, clean_cache, tmp_path):
    srv, fs = store
    victim = "mmkd-test/cache/shards/00002/words/c/0/0"
    data = bytearray(fs.cat_file(victim))
    data[100] ^= 0x01
    fs.pipe_file(victim, bytes(data))
    cache = TeacherCache(URL, local=str(tmp_path / "node"))
    cache.get(np.arange(0, 64))                  # shard 0 is fine
    with pytest.raises(CacheError) as e:
        cache.get(np.arange(128, 130))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("s3://mmkd-test/cache/shards/00002/words/c/0/0: sha256 ")
    assert "corrupt object" in message
    (copy,) = [d for d in (tmp_path / "node").iterdir() if d.is_dir()]
    assert sorted(p.name for p in (copy / "shards").iterdir()) == ["00000"]
    assert sorted(p.name for p in (copy / "fetched").iterdir()) == ["00000.json"]


def test_the_size_limit_evicts_the_least_recently_used_shard_and_a_changed_copy_is_fetched_again(
        store, clean_cache, tmp_path):
    srv, _ = store
    manifest = json.loads((clean_cache / "en-fr" / "manifest.json").read_text())
    sizes = [sum(s["bytes"].values()) for s in manifest["shards"]]
    limit = sizes[0] + sizes[1] + sizes[2] // 2          # two shards fit, three do not
    cache = TeacherCache(URL, local=str(tmp_path / "node"), limit_bytes=limit)
    (copy,) = [d for d in (tmp_path / "node").iterdir() if d.is_dir()]
    held = lambda: sorted(p.stem for p in (copy / "fetched").glob("*.json"))  # noqa: E731
    cache.get(np.arange(0, 2))
    cache.get(np.arange(64, 66))
    assert held() == ["00000", "00001"]
    os.utime(copy / "fetched" / "00000.json", (1e9, 1e9))   # shard 0 is the least recently used
    first = cache.get(np.arange(128, 130)).word_states.clone()
    assert held() == ["00001", "00002"]
    assert not (copy / "shards" / "00000").exists()
    du = sum(f.stat().st_size for f in (copy / "shards").rglob("*") if f.is_file())
    assert du <= limit
    # Shard 0 again: it was evicted, so it is fetched again (the store serves it a second time).
    before = srv.served(SHARDS + "00000/")
    cache.get(np.arange(0, 2))
    assert srv.served(SHARDS + "00000/") == 2 * before
    # A fetched file changed by another program: noticed by its identity, fetched again, values intact.
    other = TeacherCache(URL, local=str(tmp_path / "node"), limit_bytes=limit)
    target = copy / "shards" / "00002" / "words" / "c" / "0" / "0"
    raw = bytearray(target.read_bytes())
    raw[0] ^= 0xFF
    target.write_bytes(bytes(raw))
    served = srv.served(SHARDS + "00002/")
    again = other.get(np.arange(128, 130)).word_states
    assert np.array_equal(again.numpy(), first.numpy())
    assert srv.served(SHARDS + "00002/") > served
    # A limit below one shard is refused at once, naming the option.
    with pytest.raises(CacheError, match="cache_local_limit_gb="):
        TeacherCache(URL, local=str(tmp_path / "small"), limit_bytes=sizes[0] // 2)


def test_train_reads_a_cache_in_object_storage_once_and_refuses_a_corrupt_object(
        store, clean_cache, tiny_student, data_dir, tmp_path):
    srv, fs = store
    env = {**os.environ, **srv.env, "CI": "true"}
    local = tmp_path / "nvme"

    def train(out: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mmkd", "train", "--cache", URL, "--cache-local", str(local),
                               "--student", tiny_student, "--out", str(tmp_path / out), "--max-steps", "3",
                               "--batch-size", "8", "--num-workers", "0", "--checkpoint-every", "3",
                               "--log-with", "none", *extra], env=env, capture_output=True, text=True, timeout=600)

    done = train("run1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run1" / "student" / "model.safetensors").is_file()
    total = _shard_bytes(clean_cache / "en-fr")
    assert srv.served(SHARDS) == total                  # every shard once (verification = the fetch)
    saved = json.loads((tmp_path / "run1" / "config.json").read_text())["config"]
    assert saved["cache_local"] == str(local)
    srv.counting.reset()
    again = train("run2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert srv.served(SHARDS) == 0                      # the node's copy serves a second run
    # A corrupt object, on a node whose local folder is empty: refused before step 1.
    fs.put(str(clean_cache / "en-fr"), "mmkd-test/bad", recursive=True)
    victim = "mmkd-test/bad/shards/00001/cls/c/0/0"
    data = bytearray(fs.cat_file(victim))
    data[7] ^= 0x10
    fs.pipe_file(victim, bytes(data))
    bad = subprocess.run([sys.executable, "-m", "mmkd", "train", "--cache", "s3://mmkd-test/bad", "--cache-local",
                          str(tmp_path / "nvme2"), "--student", tiny_student, "--out", str(tmp_path / "run3"),
                          "--max-steps", "3", "--batch-size", "8", "--num-workers", "0", "--log-with", "none"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0
    last = bad.stderr.strip().splitlines()[-1]
    assert "s3://mmkd-test/bad/shards/00001/cls/c/0/0: sha256" in last and "training did not start" in last
    assert not (tmp_path / "run3" / "metrics.csv").exists()
