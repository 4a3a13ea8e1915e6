"""The tests' own tiny tokenizers are the same every run: tests that compare numbers between runs
(1 process against 2, resume against uninterrupted) must not depend on hash-map order."""

from __future__ import annotations

from collections import Counter

from tokenizers import normalizers, pre_tokenizers
from transformers import AutoTokenizer

import families
from mmkd.tiny import piece_vocab, train_tokenizer, word_counts


def test_piece_vocab_by_hand():
    # "low" ×3, "lowest" ×1: prefixes lo (4), low (4), lowe, lowes, lowest (1 each); suffixes ##ow (3),
    # ##owest ##west ##est ##st (1 each). Characters first, sorted; then pieces by count, then string.
    got = piece_vocab(Counter({"low": 3, "lowest": 1}), 6 + 3, "##")
    assert got[:6] == [("##e", 1), ("##o", 4), ("##s", 1), ("##t", 1), ("##w", 4), ("l", 4)]
    assert got[6:] == [("lo", 4), ("low", 4), ("##ow", 3)]


def test_tiny_tokenizers_are_the_same_every_run(tmp_path, english_texts):
    texts = english_texts[:1500]
    a = train_tokenizer(texts, 1200, tmp_path / "a").get_vocab()
    b = train_tokenizer(texts, 1200, tmp_path / "b").get_vocab()
    assert a == b and len(a) == 1200
    norm, pre = normalizers.NFKC(), pre_tokenizers.Metaspace()
    assert families._unigram(texts, 800, ["<unk>"], "<unk>").get_vocab() == \
        families._unigram(texts, 800, ["<unk>"], "<unk>").get_vocab()
    assert word_counts(["a b a"], norm, pre) == Counter({"▁a": 2, "▁b": 1})


def test_tiny_wordpiece_round_trips(tmp_path, english_texts):
    train_tokenizer(english_texts[:1500], 1200, tmp_path / "t")
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    text = "The committee adopted the resolution."
    ids = tok(text, "Le comité")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids.count(tok.sep_token_id) == 2
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.unk_token_id not in tok(text)["input_ids"]
