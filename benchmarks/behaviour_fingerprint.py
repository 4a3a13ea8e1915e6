"""What training computes, as hashes: a change that says "behaviour unchanged" prints the same JSON
before and after.

Six tiny runs of 5 steps (two tiny random BERTs from mmkd.tiny, the bundled Tatoeba en-fr sample):
the defaults, teacher heads guard / train / frozen (without XWCL), a head phase with every sentence
and StrucA option changed, and a student without an MLM head with XWCL's map. For each: the sha256
of every metrics.csv value but the timings (data_wait, step_seconds), of the saved student's weights
and of heads.safetensors.

    python benchmarks/behaviour_fingerprint.py [--work DIR]
    # before and after a change; compare the two outputs (they must be equal)

The work folder keeps the models and the cache, so both runs train on the same bytes.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import tempfile
from pathlib import Path

TIMINGS = {"data_wait", "step_seconds"}
BASE = dict(max_steps=5, batch_size=16, lr=1e-3, head_hidden=32, head_out=16, num_workers=0, log_with="none")
VARIANTS = {
    "default": {},
    "guard": {"teacher_heads": "guard"},
    "train": {"teacher_heads": "train"},
    "frozen": {"teacher_heads": "frozen", "without": ["xwcl"]},
    "head-phase": {"head_lr": 1e-2, "head_warmup_steps": 2, "senta": {"student_vector": "mean", "center": True},
                   "struca": {"temperature": 0.5, "exclude_diagonal": True, "alpha": 2.0}},
    "no-mlm-head": {"head_warmup_steps": 2, "head_lr": 1e-2, "xwcl": {"map": "linear", "similarity": "cosine"}},
}


def _stage(work: Path) -> None:
    import mmkd
    from mmkd import CacheConfig, CorpusConfig, build_cache, prepare_corpus
    from mmkd.tiny import make_tiny_bert

    if (work / "cache" / "en-fr" / "manifest.json").is_file():
        return
    work.mkdir(parents=True, exist_ok=True)
    with gzip.open(Path(mmkd.__file__).parent / "demo_data" / "tatoeba.eng-fra.tsv.gz", "rt", encoding="utf-8") as f:
        rows = f.read().splitlines()
    (work / "train.tsv").write_text("\n".join(rows[:300]) + "\n", encoding="utf-8")
    texts = [side for row in rows for side in row.split("\t")]
    make_tiny_bert([row.split("\t")[0] for row in rows], work / "teacher", 2000, seed=0)
    make_tiny_bert(texts, work / "student", 4000, seed=1, mlm=True)
    make_tiny_bert(texts, work / "student-no-mlm", 4000, seed=1, mlm=False)
    prepare_corpus(CorpusConfig(pair="en-fr", data_dir=str(work / "data"), tsv=str(work / "train.tsv")), progress=False)
    build_cache(CacheConfig(corpora=["en-fr"], teacher=str(work / "teacher"), out=str(work / "cache"),
                            data_dir=str(work / "data")), progress=False)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint(work: Path, runs: Path) -> dict:
    from mmkd import TrainConfig, train
    from mmkd import settings as st

    _stage(work)
    out = {}
    for name, change in VARIANTS.items():
        student = work / ("student-no-mlm" if name == "no-mlm-head" else "student")
        cfg = st.from_mapping(TrainConfig, {**BASE, **change, "cache": [str(work / "cache")], "student": str(student),
                                            "out": str(runs / name)}, name)
        run = train(cfg, overwrite=True, progress=False)
        with open(run / "metrics.csv", newline="", encoding="utf-8") as f:
            rows = [{k: v for k, v in r.items() if k not in TIMINGS} for r in csv.DictReader(f)]
        out[name] = {"steps": len(rows), "metrics": _sha(json.dumps(rows, sort_keys=True).encode()),
                     "student": _sha((run / "student" / "model.safetensors").read_bytes()),
                     "heads": _sha((run / "heads.safetensors").read_bytes())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "mmkd-fingerprint"),
                    help="models and cache (made once, then reused)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as runs:
        print(json.dumps(fingerprint(Path(args.work), Path(runs)), indent=2))


if __name__ == "__main__":
    main()
