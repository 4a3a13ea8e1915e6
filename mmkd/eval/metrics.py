"""Scoring functions, each checked by hand-worked examples in tests/test_eval_metrics.py.

QA follows the official SQuAD v1.1 evaluation (lower-case, strip punctuation and the articles
a/an/the, collapse white space; EM and token-F1, maximum over the gold answers). Chinese has no
spaces, so for `zh` the normalised strings are split into characters for CJK and into words
elsewhere (MLQA's "mixed segmentation"); otherwise one answer = one token and F1 is EM.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NO_SPACE_LANGS = {"zh"}


def _is_punct(ch: str) -> bool:
    return ch in _PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(text: str, lang: str = "en") -> str:
    """SQuAD v1.1: lower case, no punctuation, no articles, single spaces. For languages other
    than English, Unicode punctuation is removed too (MLQA's extension); articles only in English."""
    text = text.lower()
    if lang == "en":
        text = "".join(ch for ch in text if ch not in _PUNCT)
        text = _ARTICLES.sub(" ", text)
    else:
        text = "".join(ch for ch in text if not _is_punct(ch))
    return " ".join(text.split())


def _tokens(text: str, lang: str) -> list[str]:
    if lang not in _NO_SPACE_LANGS:
        return text.split()
    out, word = [], []
    for ch in text:
        if "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" or ch.isspace():
            if word:
                out.append("".join(word))
                word = []
            if not ch.isspace():
                out.append(ch)
        else:
            word.append(ch)
    if word:
        out.append("".join(word))
    return out


def exact_match(prediction: str, gold: str, lang: str = "en") -> float:
    return float(normalize_answer(prediction, lang) == normalize_answer(gold, lang))


def f1_score(prediction: str, gold: str, lang: str = "en") -> float:
    pred = _tokens(normalize_answer(prediction, lang), lang)
    ref = _tokens(normalize_answer(gold, lang), lang)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], answers: dict[str, list[str]], lang: str = "en") -> dict:
    """Mean EM and F1 (in %) over the questions of `answers`; a missing prediction scores 0."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        em += max(exact_match(pred, g, lang) for g in golds)
        f1 += max(f1_score(pred, g, lang) for g in golds)
    n = max(1, len(answers))
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}


def accuracy(predictions, labels) -> float:
    predictions, labels = list(predictions), list(labels)
    if len(predictions) != len(labels) or not labels:
        raise ValueError(f"accuracy of {len(predictions)} predictions against {len(labels)} labels")
    return 100.0 * sum(int(p == g) for p, g in zip(predictions, labels)) / len(labels)


ALIGNMENT_TEMPERATURE = 0.05    # τ of the held-out InfoNCE (e5 and SimCSE train at 0.01-0.05)


def alignment_infonce(similarity, temperature: float = ALIGNMENT_TEMPERATURE) -> float:
    """The continuous alignment loss of held-out translations: InfoNCE over cosine similarities,
    -log softmax_j(sim[i, j] / τ) at j = i, averaged over the rows and over both directions (rows and
    columns). Lower is better; ln N for vectors that tell nothing apart. Unlike accuracy it moves when
    the right translation gets closer without yet becoming the nearest."""
    import numpy as np

    sim = np.asarray(similarity, dtype=np.float64) / temperature

    def one_way(s):
        top = s.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
        return float((log_z - np.diagonal(s)).mean())

    return (one_way(sim) + one_way(sim.T)) / 2


def retrieval_accuracy(similarity) -> float:
    """similarity[i, j] between source i and candidate j; the right candidate is j = i."""
    import numpy as np

    sim = np.asarray(similarity)
    return 100.0 * float((sim.argmax(axis=1) == np.arange(len(sim))).mean())
