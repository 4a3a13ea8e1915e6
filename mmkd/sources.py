"""What a training run reads: the prepared corpora (target text) and the teacher features (a
cache per language pair, or an online teacher), checked against each other before any step.

Refusals name what differs: a corpus prepared again since the cache was written (fingerprint), a
cache made with another word-splitting rule, caches from different teachers or layers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import fsspec
import numpy as np

from mmkd.cache.reader import TeacherCache
from mmkd.corpus import PreparedCorpus, open_corpus
from mmkd.errors import CacheError, MMKDError
from mmkd.features import CachedTeacher, OnlineTeacher
from mmkd.words import WORD_RULE_VERSION


class SourceError(MMKDError):
    pass


@dataclass
class TrainingSources:
    corpora: list[PreparedCorpus]
    features: CachedTeacher | OnlineTeacher
    identities: list[dict]           # recorded in the run and its checkpoints
    manifests: dict[str, dict]       # cache manifests, saved next to the student

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.corpora]

    def texts(self, keys) -> tuple[list[str], list[str]]:
        """English and target text of (corpus_index, stream_index, pair_id) keys, in key order."""
        english, targets = [""] * len(keys), [""] * len(keys)
        corpus = np.array([k[0] for k in keys])
        pair = np.array([k[2] for k in keys], dtype=np.int64)
        for c in np.unique(corpus):
            pos = np.flatnonzero(corpus == c)
            en, x = self.corpora[int(c)].rows(pair[pos])
            for p, e, t in zip(pos, en, x):
                english[p], targets[p] = e, t
        return english, targets


def find_caches(paths: list[str]) -> list[str]:
    """Each path is a cache (holds manifest.json) or a folder of caches (`cache-teacher --out`)."""
    found = []
    for path in paths:
        fs, root = fsspec.core.url_to_fs(path)
        if fs.exists(f"{root}/manifest.json"):
            found.append(path.rstrip("/"))
            continue
        subs = sorted(p for p in fs.ls(root, detail=False) if fs.exists(f"{p}/manifest.json")) if fs.isdir(root) else []
        if not subs:
            raise SourceError(f"{path}: no teacher cache here (no manifest.json in it or in its sub-folders); "
                              "make one with `mmkd cache-teacher --corpus NAME --out DIR`")
        found += [f"{path.rstrip('/')}/{Path(p).name}" for p in subs]
    return found


def _corpus_for(manifest: dict, overrides: dict[str, PreparedCorpus], data_dir: str) -> PreparedCorpus:
    name = manifest["corpus"]["name"]
    if name in overrides:
        return overrides[name]
    recorded = manifest["corpus"].get("path")
    if recorded and (Path(recorded) / "meta.json").is_file():
        return open_corpus(recorded)
    return open_corpus(name, data_dir)


def open_sources(cfg, device="cpu") -> TrainingSources:
    overrides = {c.name: c for c in (open_corpus(n, cfg.data_dir) for n in cfg.corpora)}
    if cfg.online_teacher:
        if not overrides:
            raise SourceError("--online-teacher needs the corpora to train on: --corpus NAME (repeatable)")
        from mmkd.teacher import load_teacher, model_hash

        model, tokenizer = load_teacher(cfg.online_teacher, device, cfg.trust_remote_code)
        corpora = sorted(overrides.values(), key=lambda c: c.name)   # same order as caches: by name
        teacher_hash = model_hash(model)
        identities = [{"corpus": c.name, "fingerprint": c.fingerprint, "teacher_hash": teacher_hash,
                       "layer": cfg.teacher_layer, "max_length": cfg.teacher_max_length, "source": "online"}
                      for c in corpora]
        features = OnlineTeacher(model, tokenizer, cfg.teacher_layer, cfg.teacher_max_length)
        return TrainingSources(corpora, features, identities, {})

    # Corpus index = rank of the corpus name, whatever the order on the command line.
    caches = sorted((TeacherCache(p) for p in find_caches(cfg.cache)), key=lambda c: c.manifest["corpus"]["name"])
    first = caches[0].manifest
    corpora, identities, manifests = [], [], {}
    for cache in caches:
        m = cache.manifest
        if m["word_rule"] != WORD_RULE_VERSION:
            raise SourceError(f"{cache.url}: words were split with rule {m['word_rule']!r}, this mmkd uses "
                              f"{WORD_RULE_VERSION!r}; rebuild the cache")
        for key in ("teacher", "layer", "hidden_size", "word_rule"):
            if m[key] != first[key]:
                raise SourceError(f"{cache.url} and {caches[0].url} differ in {key}: {m[key]!r} vs {first[key]!r}; "
                                  "one run distils one teacher")
        corpus = _corpus_for(m, overrides, cfg.data_dir)
        if corpus.fingerprint != m["corpus"]["fingerprint"] or len(corpus) != m["n_sentences"]:
            raise SourceError(
                f"{cache.url} was written for corpus {m['corpus']['name']!r} with fingerprint "
                f"{m['corpus']['fingerprint'][:16]} ({m['n_sentences']} pairs), but {corpus.path} has fingerprint "
                f"{corpus.fingerprint[:16]} ({len(corpus)} pairs): the corpus changed; rebuild the cache")
        if m["corpus"]["name"] in manifests:
            raise CacheError(f"two caches for corpus {m['corpus']['name']!r} ({cache.url})")
        corpora.append(corpus)
        manifests[m["corpus"]["name"]] = m
        identities.append({"corpus": corpus.name, "fingerprint": corpus.fingerprint,
                           "teacher_hash": m["teacher"]["hash"], "layer": m["layer"],
                           "max_length": m["max_length"], "source": f"cache:{m['dtype']}"})
    return TrainingSources(corpora, CachedTeacher(caches), identities, manifests)
