"""What a training run reads: the pairs' text and the teacher's features, behind one interface.

`TeacherFeatures` is the whole contract between the stages. Given `PairKey`s it returns the pairs'
text (`text`: the cached English word lists, English and target sentences), or the text and the
teacher's word states, [CLS] and mean together (`read`, one pass over the shards that hold them).
Two implementations:

- `CachedFeatures` reads teacher caches and nothing else: the text is in the cache (format 2), so
  a cache copied to another machine or an object store trains with no corpus beside it, and the
  teacher encoder is never loaded.
- `OnlineFeatures` runs the teacher through `mmkd.teacher.encode_words` (the function that writes
  caches) on prepared corpora, so an fp32 cache and the online teacher give the same numbers.

`open_features(cfg)` builds the one the config asks for and checks the caches against each other.
The trainer cannot tell them apart except by `runs_in_workers` (cache reads happen in data-loader
workers; the online teacher runs on the training device in the main process).
"""

from __future__ import annotations

from typing import Protocol

import fsspec
import numpy as np

from mmkd.cache.reader import Sentences, TeacherCache
from mmkd.errors import CacheError, MMKDError
from mmkd.supply import describe
from mmkd.words import WORD_RULE_VERSION, split_words


class SourceError(MMKDError):
    pass


class TeacherFeatures(Protocol):
    sizes: list[int]             # pairs per corpus, in corpus-index order
    hidden_size: int             # the teacher's width
    runs_in_workers: bool        # True: safe to call from data-loader worker processes
    identities: list[dict]       # recorded in the run and its checkpoints; a resume must match
    manifests: dict              # {corpus: Manifest} of the caches read (empty online), saved with the student
    teacher_source: str          # the teacher as a reader can look it up (model card)
    has_teacher_mean: bool       # TeacherBatch.mean is filled (format-3 caches, the online teacher)

    def text(self, keys) -> tuple[list[list[str]], list[str], list[str]]: ...   # English words, English, targets

    def read(self, keys) -> Sentences: ...          # text and teacher features together


def _by_corpus(keys):
    corpus = np.array([k[0] for k in keys], dtype=np.int64)
    pair = np.array([k[-1] for k in keys], dtype=np.int64)
    for c in np.unique(corpus):
        pos = np.flatnonzero(corpus == c)
        yield int(c), pos, pair[pos]


class CachedFeatures:
    runs_in_workers = True

    def __init__(self, caches: list[TeacherCache]):
        self.caches = caches
        self.hidden_size = caches[0].manifest.hidden_size
        self.sizes = [len(c) for c in caches]
        self.manifests = {c.manifest.corpus_name: c.manifest for c in caches}
        self.identities = [c.manifest.identity for c in caches]
        self.teacher_source = caches[0].manifest.teacher_source
        self.has_teacher_mean = all(c.manifest.has_mean for c in caches)

    def text(self, keys) -> tuple[list[list[str]], list[str], list[str]]:
        words: list[list[str]] = [[] for _ in keys]
        english, targets = [""] * len(keys), [""] * len(keys)
        for c, pos, pairs in _by_corpus(keys):
            cache = self.caches[c]
            for p, w, e, x in zip(pos, cache.words(pairs), *cache.texts(pairs)):
                words[p], english[p], targets[p] = w, e, x
        return words, english, targets

    def read(self, keys) -> Sentences:
        out = Sentences.empty(len(keys), self.has_teacher_mean)
        for c, pos, pairs in _by_corpus(keys):
            out.place(pos, self.caches[c].sentences(pairs))
        return out


class OnlineFeatures:
    runs_in_workers = False

    def __init__(self, model, tokenizer, corpora: list, teacher_hash: str, source: str, layer: int = -1,
                 max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer, self.corpora = model, tokenizer, corpora
        self.layer, self.max_length, self.batch_size = layer, max_length, batch_size
        self.hidden_size = model.config.hidden_size
        self.sizes = [len(c) for c in corpora]
        self.manifests: dict = {}
        self.teacher_source = source
        self.has_teacher_mean = True
        self.identities = [{"corpus": c.name, "fingerprint": c.fingerprint, "teacher_hash": teacher_hash,
                            "layer": layer, "max_length": max_length, "source": "online"} for c in corpora]

    def text(self, keys) -> tuple[list[list[str]], list[str], list[str]]:
        words: list[list[str]] = [[] for _ in keys]
        english, targets = [""] * len(keys), [""] * len(keys)
        for c, pos, pairs in _by_corpus(keys):
            en, x = self.corpora[c].rows(pairs)
            for p, e, t in zip(pos, en, x):
                words[p], english[p], targets[p] = split_words(e), e, t
        return words, english, targets

    def read(self, keys) -> Sentences:
        """The teacher run on the pairs' words; words it cannot see (its max length) are dropped, as
        `cache-teacher` drops them, so the word lists returned are the kept ones."""
        from mmkd.teacher import encode_words   # lazy: stage one, loaded only for --online-teacher

        words, english, targets = self.text(keys)
        encoded = []
        for i in range(0, len(words), self.batch_size):
            encoded += encode_words(self.model, self.tokenizer, words[i:i + self.batch_size], self.layer,
                                    self.max_length)
        kept = [[w[j] for j in e.kept] for w, e in zip(words, encoded)]
        return Sentences(kept, english, targets, [e.word_states for e in encoded], [e.cls for e in encoded],
                         [e.mean for e in encoded])


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
        found += [f"{path.rstrip('/')}/{p.rstrip('/').rsplit('/', 1)[-1]}" for p in subs]
    return found


def open_cached(paths: list[str], local: str | None = None, limit_bytes: int = 0) -> CachedFeatures:
    """The caches at `paths`; with `local`, each shard is read from a node-local copy (cache/fetch.py)."""
    # Corpus index = rank of the corpus name, whatever the order on the command line.
    caches = sorted((TeacherCache(p, local, limit_bytes) for p in find_caches(paths)),
                    key=lambda c: c.manifest.corpus_name)
    first = caches[0].manifest
    seen = set()
    for cache in caches:
        m = cache.manifest
        if m.word_rule != WORD_RULE_VERSION:
            raise SourceError(f"{cache.url}: words were split with rule {m.word_rule!r}, this mmkd uses "
                              f"{WORD_RULE_VERSION!r}; rebuild the cache")
        for what in ("teacher_hash", "layer", "hidden_size"):
            if getattr(m, what) != getattr(first, what):
                raise SourceError(f"{cache.url} and {caches[0].url} differ in {what}: {getattr(m, what)!r} vs "
                                  f"{getattr(first, what)!r}; one run distils one teacher")
        if m.corpus_name in seen:
            raise CacheError(f"two caches for corpus {m.corpus_name!r} ({cache.url})")
        seen.add(m.corpus_name)
    return CachedFeatures(caches)


def open_features(cfg, device="cpu") -> TeacherFeatures:
    """The features `cfg` asks for: its caches (`cfg.cache`), or the online teacher over its
    prepared corpora (`cfg.online_teacher`, `cfg.corpora`, `cfg.data_dir`)."""
    if not cfg.online_teacher:
        if cfg.corpora:
            raise SourceError("--corpus is for --online-teacher: a teacher cache holds the pairs' text itself")
        return open_cached(cfg.cache, cfg.cache_local, int(cfg.cache_local_limit_gb * 1e9))
    if not cfg.corpora:
        raise SourceError("--online-teacher needs the corpora to train on: --corpus NAME (repeatable)")
    from mmkd.corpus import open_corpus   # lazy: stage one (this and the next), loaded only for --online-teacher
    from mmkd.teacher import load_teacher, model_hash

    corpora = sorted((open_corpus(n, cfg.data_dir) for n in cfg.corpora), key=lambda c: c.name)   # as caches: by name
    model, tokenizer = load_teacher(cfg.online_teacher, device, cfg.trust_remote_code)
    return OnlineFeatures(model, tokenizer, corpora, model_hash(model), describe(cfg.online_teacher),
                          cfg.teacher_layer, cfg.teacher_max_length)
