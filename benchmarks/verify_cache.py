"""What verify-on-read costs (issue #15). Prints JSON.

On a 768-d fp16 cache (bert-base width: a random 1-layer BERT over the shared English sentences,
shards of 1,024 sentences, as in benchmarks/cache_teacher.py):
1. first verification: every file of every shard hashed against the manifest (what `mmkd train`
   does once per cache before its first step, split over its processes), MB/s;
2. the remembered check on later runs (one `stat` per file, no reading);
3. for scale, one shuffled-read epoch of the same cache (`TeacherCache.get`, batches of 256).
Verification happens once per cache, not once per epoch; the per-epoch cost is 0 after the first
run, and the first run's cost is spread over the run's epochs.

    python benchmarks/verify_cache.py --shared-data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from mmkd.cache import CacheConfig, TeacherCache, build_cache
from mmkd.cache.integrity import ShardVerifier
from mmkd.corpus import CorpusConfig, prepare_corpus


def build(work: Path, shared: Path, n: int) -> TeacherCache:
    from mmkd.measure import english_sample, random_bert

    texts = english_sample(shared, n, tico=False)
    (work / "all.tsv").write_text("".join(f"{t}\t{t}\n" for t in texts))
    prepare_corpus(CorpusConfig(pair="en-xx", data_dir=str(work / "data"), tsv=str(work / "all.tsv"), min_tokens=1),
                   progress=False)
    wide = random_bert(texts, work / "wide", 768)
    build_cache(CacheConfig(corpora=["en-xx"], teacher=str(wide), out=str(work / "cache"), data_dir=str(work / "data"),
                            dtype="fp16", batch_size=128, shard_size=1024), progress=False)
    return TeacherCache(str(work / "cache" / "en-xx"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared-data", default="../shared/data")
    ap.add_argument("--sentences", type=int, default=12000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = build(Path(tmp), Path(args.shared_data), args.sentences)
        shards = range(len(cache.manifest["shards"]))
        nbytes = sum(sum(s["bytes"].values()) for s in cache.manifest["shards"])
        verifier = ShardVerifier(cache)
        t = time.perf_counter()
        for k in shards:
            verifier.verify(k)
        first = time.perf_counter() - t
        t = time.perf_counter()
        assert all(verifier.is_verified(k) for k in shards)
        again = time.perf_counter() - t
        rng = np.random.default_rng(0)
        order = rng.permutation(len(cache))
        t = time.perf_counter()
        for i in range(0, len(order), 256):
            cache.get(order[i:i + 256])
        epoch = time.perf_counter() - t
        mb = nbytes / 1e6
        report = {
            "cache": {"sentences": len(cache), "shards": len(shards), "megabytes": round(mb, 1), "dtype": "fp16",
                      "hidden": cache.hidden_size},
            "first_verification_seconds": round(first, 3),
            "first_verification_mb_per_s": round(mb / first, 1),
            "remembered_check_seconds": round(again, 4),
            "shuffled_read_epoch_seconds": round(epoch, 3),
            "first_verification_over_one_read_epoch": round(first / epoch, 3),
            "paper_scale_extrapolation": {
                "note": "400 GB cache, hashed once at this MB/s per process, split over 8 processes "
                        "(disk bandwidth permitting); not measured",
                "minutes_once": round(400e3 / (mb / first) / 8 / 60, 1)},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
