"""Shared by the benchmarks: English sentences from the shared samples, and a random 1-layer BERT
of bert-base width (768) to write caches of the paper's width quickly."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


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


def wide_teacher(texts: list[str], folder: Path) -> Path:
    """A random 768-d BERT with one layer and a tokenizer trained on `texts`."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from tiny import make_tiny_bert
    from transformers import AutoModel

    wide = make_tiny_bert(texts[:5000], folder, 3000, seed=0, hidden=768)
    m = AutoModel.from_pretrained(wide)
    m.encoder.layer = m.encoder.layer[:1]
    m.config.num_hidden_layers = 1
    m.save_pretrained(wide)
    return wide
