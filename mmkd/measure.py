"""What the benchmarks (benchmarks/*.py) share: sample sentences, random models of a given shape,
teacher features that cost nothing (the floor a cached step is compared to), and the step-time
summary of a run. Benchmarks import these from here, never from each other or from the tests."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import numpy as np

from mmkd.cache.reader import Sentences
from mmkd.tiny import make_tiny_bert


def english_sample(shared: Path, n: int, tico: bool = True) -> list[str]:
    """Up to n English sentences from every shared source, shuffled together (seed 0)."""
    texts = []
    for f in sorted((shared / "parallel" / "tatoeba_challenge").glob("eng-*.tsv")):
        texts += [line.split("\t")[0] for line in f.read_text().splitlines()]
    texts += (shared / "parallel/ntrex128/newstest2019-src.eng.txt").read_text().splitlines()
    texts += (shared / "parallel/europarl_v7_fr-en/europarl-v7.fr-en.en").read_text().splitlines()
    if tico:
        texts += (shared / "parallel/tico19_test/tico19-test.en").read_text().splitlines()
    texts = [t for t in texts if t.strip()]
    np.random.default_rng(0).shuffle(texts)        # a mix of all sources, not the short ones first
    return texts[:n]


def random_bert(texts: list[str], folder: Path, hidden: int, layers: int = 1, vocab: int = 3000) -> Path:
    """A random BERT of width `hidden` and `layers` layers with a tokenizer built from `texts`: a
    teacher of a given width, to write caches of that width quickly."""
    from transformers import AutoModel   # lazy: transformers, see mmkd/__init__.py
    path = make_tiny_bert(texts[:5000], folder, vocab, seed=0, hidden=hidden)
    m = AutoModel.from_pretrained(path)
    m.encoder.layer = m.encoder.layer[:layers]
    m.config.num_hidden_layers = layers
    m.save_pretrained(path)
    return path


class FreeTeacher:
    """Teacher features that cost nothing: the cached pairs' text as usual, zeros for the teacher's
    word states and [CLS]. A step on these is the student-only floor a cached step is measured against."""
    runs_in_workers = True

    def __init__(self, inner):
        self.inner, self.caches = inner, inner.caches
        self.hidden_size, self.sizes = inner.hidden_size, inner.sizes
        self.identities, self.manifests, self.teacher_source = inner.identities, inner.manifests, inner.teacher_source

    def text(self, keys):
        return self.inner.text(keys)

    def read(self, keys) -> Sentences:
        words, english, targets = self.inner.text(keys)
        return Sentences(words, english, targets, [np.zeros((len(w), self.hidden_size), np.float32) for w in words],
                         [np.zeros(self.hidden_size, np.float32) for _ in words], None)


def step_medians(run: Path, skip: int = 2) -> dict:
    """Median step time and data wait of a run's metrics.csv, the first `skip` steps left out."""
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))[skip:]
    step = [float(r["step_seconds"]) for r in rows]
    wait = [float(r["data_wait"]) for r in rows]
    return {"median_step_seconds": round(statistics.median(step), 4),
            "median_data_wait": round(statistics.median(wait), 4),
            "data_wait_fraction": round(sum(wait) / sum(step), 4), "steps_measured": len(rows)}
