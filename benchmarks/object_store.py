"""A cache in object storage, read through a node-local copy (issue #32, item 6). Prints JSON.

A 768-d fp16 cache (a random 1-layer BERT of bert-base width over the shared English sentences,
shards of 1,024 sentences, as in benchmarks/verify_cache.py) is uploaded to an S3-compatible server
(moto's server mode on 127.0.0.1, through s3fs). Then:
1. one shuffled epoch of batches read from `s3://...` with `cache_local` (each shard fetched on
   first touch): bytes fetched from the store / bytes of the shards touched (goal: 1.0);
2. the read part of a training step (what `CachedFeatures` gives a step: word lists, text, word
   states and [CLS] of a batch of 256) after each shard's first fetch, against the same reads from
   the same cache on a local disk, alternated batch by batch: the median ratio (goal: <= 1.05). The
   student's forward and backward are the same either way, so this is the ratio's worst case.

    python benchmarks/object_store.py --shared-data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mmkd.cache import CacheConfig, TeacherCache, build_cache
from mmkd.corpus import CorpusConfig, prepare_corpus
from mmkd.features import CachedFeatures


def build(work: Path, shared: Path, n: int) -> Path:
    from mmkd.measure import english_sample, random_bert

    texts = english_sample(shared, n, tico=False)
    (work / "all.tsv").write_text("".join(f"{t}\t{t}\n" for t in texts))
    prepare_corpus(CorpusConfig(pair="en-xx", data_dir=str(work / "data"), tsv=str(work / "all.tsv"), min_tokens=1),
                   progress=False)
    wide = random_bert(texts, work / "wide", 768)
    build_cache(CacheConfig(corpora=["en-xx"], teacher=str(wide), out=str(work / "cache"), data_dir=str(work / "data"),
                            dtype="fp16", batch_size=128, shard_size=1024), progress=False)
    return work / "cache" / "en-xx"


def read_step(features: CachedFeatures, keys) -> None:
    features.read(keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared-data", default="../shared/data")
    ap.add_argument("--sentences", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5, help="Shuffled epochs timed on each side.")
    args = ap.parse_args()
    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    import fsspec.config
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer("127.0.0.1", 0, verbose=False)
    server.start()
    endpoint = "http://%s:%d" % server.get_host_and_port()
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            local_cache = build(work, Path(args.shared_data), args.sentences)
            fs = s3fs.S3FileSystem()
            fs.mkdir("mmkd-bench")
            fs.put(str(local_cache), "mmkd-bench/cache", recursive=True)
            local = TeacherCache(str(local_cache))
            remote = TeacherCache("s3://mmkd-bench/cache", local=str(work / "nvme"))
            shard_bytes = {k: remote.fetcher.shard_bytes(k) for k in range(len(remote.manifest.shards))}
            rng = np.random.default_rng(0)
            n, b = len(local), args.batch
            keys = lambda order, i: [(0, int(p)) for p in order[i:i + b]]  # noqa: E731
            # 1. First touch of every shard: bytes fetched / bytes of the shards touched.
            order = rng.permutation(n)
            touched: set[int] = set()
            remote_features = CachedFeatures([remote])
            started = time.perf_counter()
            for i in range(0, n, b):
                read_step(remote_features, keys(order, i))
                touched |= {int(p) // remote.shard_size for p in order[i:i + b]}
            first_epoch = time.perf_counter() - started
            touched_bytes = sum(shard_bytes[k] for k in touched)
            fetched = remote.fetcher.fetched_bytes
            # 2. After the fetch: the same batches, alternated local / remote.
            local_features = CachedFeatures([local])
            for i in range(0, n, b):                      # warm both sides' page caches and maps
                read_step(local_features, keys(order, i))
            ratios, t_local, t_remote = [], [], []
            for _ in range(args.rounds):
                order = rng.permutation(n)
                for i in range(0, n, b):
                    pair = []
                    for features in (local_features, remote_features):
                        t = time.perf_counter()
                        read_step(features, keys(order, i))
                        pair.append(time.perf_counter() - t)
                    t_local.append(pair[0])
                    t_remote.append(pair[1])
                    ratios.append(pair[1] / pair[0])
            report = {
                "cache": {"sentences": n, "shards": len(shard_bytes), "megabytes": round(sum(shard_bytes.values()) / 1e6, 1),
                          "dtype": "fp16", "hidden": local.hidden_size, "store": "moto server on 127.0.0.1 via s3fs"},
                "batch": b,
                "first_epoch_seconds_with_fetch": round(first_epoch, 3),
                "bytes_fetched": fetched,
                "bytes_of_shards_touched": touched_bytes,
                "bytes_fetched_over_touched": round(fetched / touched_bytes, 4),
                "read_step_ms_local_median": round(1e3 * statistics.median(t_local), 3),
                "read_step_ms_object_store_median": round(1e3 * statistics.median(t_remote), 3),
                "read_step_object_store_over_local_median_of_pairs": round(statistics.median(ratios), 4),
                "pairs_timed": len(ratios),
                "goals": {"bytes_ratio": "~1.0", "step_ratio": "<= 1.05"},
            }
    finally:
        server.stop()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
