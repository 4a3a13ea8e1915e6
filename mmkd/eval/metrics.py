"""Scoring functions, each checked by hand-worked examples in tests/test_eval.py.

QA answers are scored by one of two published rule sets (`qa_scoring`, named in results.json):
- `squad` (the default for XQuAD, as XTREME scores it: google-research/xtreme's evaluate.py uses
  the official SQuAD v1.1 script for xquad): lower case; remove ASCII punctuation
  (`string.punctuation`); replace the English articles a/an/the (as whole words, in any language)
  by a space; split on white space. EM compares the joined tokens, F1 the token bags.
- `mlqa` (MLQA's evaluation script, v1): lower case; remove every Unicode punctuation character
  (category P*) and ASCII punctuation; remove the language's articles (en: a an the; es: un una unos
  unas el la los las; de: ein eine einen einem eines einer der die das den dem des; vi: của là cái
  chiếc những; ar: every "ال"; hi, zh: none); split on white space, and for zh also into single
  characters of U+4E00-U+9FA5 ("mixed segmentation"). It is defined for en es hi vi de ar zh only.
The maximum over the gold answers is taken per question; a missing prediction scores 0.
"""

from __future__ import annotations

import collections
import re
import string
import sys
import unicodedata

import numpy as np

SCORINGS = ("squad", "mlqa")
_ASCII_PUNCT = set(string.punctuation)
_SQUAD_ARTICLES = re.compile(r"\b(a|an|the)\b")
_MLQA_PUNCT = {chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)).startswith("P")} | _ASCII_PUNCT
_MLQA_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "ar": re.compile("ال"),
    "hi": None,
    "zh": None,
}
MLQA_LANGUAGES = tuple(_MLQA_ARTICLES)
_MLQA_CJK = re.compile("[\u4e00-\u9fa5]")


def _mixed_segmentation(text: str) -> list[str]:
    """MLQA's zh tokens: each CJK character alone, white-space words for the rest."""
    out, run = [], []
    for ch in text:
        if _MLQA_CJK.match(ch) or ch in _MLQA_PUNCT:
            out += "".join(run).split()
            run = []
            out.append(ch)
        else:
            run.append(ch)
    return out + "".join(run).split()


def answer_tokens(text: str, lang: str = "en", scoring: str = "squad") -> list[str]:
    """The normalised tokens of an answer under `scoring`."""
    text = text.lower()
    if scoring == "squad":
        text = "".join(ch for ch in text if ch not in _ASCII_PUNCT)
        return _SQUAD_ARTICLES.sub(" ", text).split()
    if scoring == "mlqa":
        if lang not in _MLQA_ARTICLES:
            raise ValueError(f"MLQA's scoring is defined for {', '.join(MLQA_LANGUAGES)} only, not {lang!r}; "
                             "use qa_scoring=squad")
        text = "".join(ch for ch in text if ch not in _MLQA_PUNCT)
        if _MLQA_ARTICLES[lang] is not None:
            text = _MLQA_ARTICLES[lang].sub(" ", text)
        return _mixed_segmentation(text) if lang == "zh" else text.split()
    raise ValueError(f"unknown QA scoring {scoring!r}; choose {', '.join(SCORINGS)}")


def normalize_answer(text: str, lang: str = "en", scoring: str = "squad") -> str:
    return " ".join(answer_tokens(text, lang, scoring))


def exact_match(prediction: str, gold: str, lang: str = "en", scoring: str = "squad") -> float:
    return float(normalize_answer(prediction, lang, scoring) == normalize_answer(gold, lang, scoring))


def f1_score(prediction: str, gold: str, lang: str = "en", scoring: str = "squad") -> float:
    pred, ref = answer_tokens(prediction, lang, scoring), answer_tokens(gold, lang, scoring)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: dict[str, str], answers: dict[str, list[str]], lang: str = "en",
                 scoring: str = "squad") -> dict:
    """Mean EM and F1 (in %) over the questions of `answers`; a missing prediction scores 0."""
    em = f1 = 0.0
    for qid, golds in answers.items():
        pred = predictions.get(qid, "")
        em += max(exact_match(pred, g, lang, scoring) for g in golds)
        f1 += max(f1_score(pred, g, lang, scoring) for g in golds)
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
    sim = np.asarray(similarity, dtype=np.float64) / temperature

    def one_way(s):
        top = s.max(axis=1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(s - top).sum(axis=1))
        return float((log_z - np.diagonal(s)).mean())

    return (one_way(sim) + one_way(sim.T)) / 2


def retrieval_accuracy(similarity) -> float:
    """similarity[i, j] between source i and candidate j; the right candidate is j = i."""
    sim = np.asarray(similarity)
    return 100.0 * float((sim.argmax(axis=1) == np.arange(len(sim))).mean())
