"""Teacher features for the trainer: one small interface, two implementations.

`get(keys, english)` returns a `TeacherBatch` (word states, word mask, [CLS], word lists) for
`keys = [(corpus_index, pair_id), ...]`. `CachedTeacher` reads the teacher cache (the teacher
encoder is never loaded); `OnlineTeacher` runs the teacher through `mmkd.teacher.encode_words`,
the very function that wrote the cache, so an fp32 cache and the online teacher give the same
numbers. The trainer cannot tell them apart except by `runs_in_workers` (cache reads happen in
data-loader workers; the online teacher runs on the training device in the main process).
"""

from __future__ import annotations

import numpy as np

from mmkd.cache.reader import TeacherBatch, TeacherCache
from mmkd.words import split_words


def _by_corpus(keys):
    corpus = np.array([k[0] for k in keys])
    pair = np.array([k[1] for k in keys], dtype=np.int64)
    return corpus, pair


class CachedTeacher:
    runs_in_workers = True

    def __init__(self, caches: list[TeacherCache]):
        self.caches = caches
        self.hidden_size = caches[0].hidden_size

    def get(self, keys, english=None) -> TeacherBatch:
        corpus, pair = _by_corpus(keys)
        parts, order = [], []
        for c in np.unique(corpus):
            pos = np.flatnonzero(corpus == c)
            parts.append(self.caches[int(c)].get(pair[pos]))
            order.append(pos)
        batch = TeacherBatch.concat(parts)
        inverse = np.argsort(np.concatenate(order), kind="stable")
        return TeacherBatch(word_states=batch.word_states[inverse], word_mask=batch.word_mask[inverse],
                            cls=batch.cls[inverse], words=[batch.words[i] for i in inverse])


class OnlineTeacher:
    runs_in_workers = False

    def __init__(self, model, tokenizer, layer: int = -1, max_length: int = 128, batch_size: int = 64):
        self.model, self.tokenizer = model, tokenizer
        self.layer, self.max_length, self.batch_size = layer, max_length, batch_size
        self.hidden_size = model.config.hidden_size

    def get(self, keys, english) -> TeacherBatch:
        from mmkd.teacher import encode_words

        words = [split_words(s) for s in english]
        encoded = []
        for i in range(0, len(words), self.batch_size):
            encoded += encode_words(self.model, self.tokenizer, words[i:i + self.batch_size], self.layer, self.max_length)
        return TeacherBatch.from_sentences([e.word_states for e in encoded], [e.cls for e in encoded],
                                           [[w[j] for j in e.kept] for w, e in zip(words, encoded)])
