"""Tiny BERT models and WordPiece tokenizers built from text (offline, seconds, the same every time),
for the tests, the benchmarks' `--tiny` runs and smoke runs: a real model's shapes are not needed to
check that a pipeline works."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import AutoTokenizer, BertConfig, BertForPreTraining, BertModel, PreTrainedTokenizerFast

from mmkd.batching import PairKey, Part, build_student_batch
from mmkd.cache.reader import Sentences
from mmkd import objectives as objs
from mmkd.objectives.inputs import MaskingConfig
from mmkd.words import split_words

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_counts(texts: list[str], normalizer, pre_tokenizer) -> Counter:
    """How often each pre-tokenized word occurs, with the tokenizer's own normalizer and pre-tokenizer."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def piece_vocab(words: Counter, size: int, cont: str) -> list[tuple[str, int]]:
    """A deterministic sub-word vocabulary of about `size` pieces with their counts: every character
    (word-initial, and `cont` + character inside a word), then the most frequent word prefixes and
    `cont` + word suffixes (ties broken by the string). The tokenizers library's trainers break ties
    in hash-map order, which differs from run to run; tests that compare numbers across runs need
    the same tokenizer every time."""
    chars: Counter = Counter()
    pieces: Counter = Counter()
    for w, c in words.items():
        chars[w[0]] += c
        for ch in w[1:]:
            chars[cont + ch] += c
        for i in range(2, len(w) + 1):
            pieces[w[:i]] += c
        for i in range(1, len(w) - 1):
            pieces[cont + w[i:]] += c
    for ch in chars:
        pieces.pop(ch, None)
    ranked = sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))[:max(0, size - len(chars))]
    return sorted(chars.items()) + ranked


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> PreTrainedTokenizerFast:
    """A cased BERT WordPiece tokenizer (like bert-base-cased / mBERT) built from `texts`, the same
    every run (see `piece_vocab`)."""
    return wordpiece_tokenizer(texts, vocab_size, out, pair="[CLS] $A [SEP] $B:1 [SEP]:1")


def wordpiece_tokenizer(texts: list[str], vocab_size: int, out: Path, pair: str,
                        model_input_names: list[str] | None = None, pad_to: int | None = None) -> PreTrainedTokenizerFast:
    """A cased WordPiece tokenizer of about `vocab_size` pieces from `texts`; with `pad_to`, filled up
    with `[unused<i>]` pieces (as mBERT's vocabulary has them) to exactly that many, so it matches a
    model of a real vocabulary size."""
    normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                            strip_accents=False, lowercase=False)
    pre = pre_tokenizers.BertPreTokenizer()
    pieces = piece_vocab(word_counts(texts, normalizer, pre), vocab_size - len(SPECIAL), "##")
    names = SPECIAL + [p for p, _ in pieces]
    if pad_to is not None:
        names += [f"[unused{i}]" for i in range(max(0, pad_to - len(names)))]
    vocab = {t: i for i, t in enumerate(names)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair=pair, special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    extra = {"model_input_names": model_input_names} if model_input_names else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=512, **extra)
    fast.save_pretrained(out)
    return fast


def tiny_config(vocab_size: int, hidden: int = 32, layers: int = 2, positions: int = 160) -> BertConfig:
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=positions,
                      type_vocab_size=2)


def make_tiny_bert(texts: list[str], out: Path, vocab_size: int, seed: int, mlm: bool = False,
                   hidden: int = 32, positions: int = 160) -> Path:
    """Tokenizer + randomly initialised BERT (seeded) saved to `out`; loadable by Auto* classes.
    mlm=True saves it the way mBERT's checkpoint is: `BertForPreTraining` (MLM head, pooler, NSP head)."""
    tok = train_tokenizer(texts, vocab_size, out)
    torch.manual_seed(seed)
    cls = BertForPreTraining if mlm else BertModel
    model = cls(tiny_config(len(tok), hidden=hidden, positions=positions))
    model.save_pretrained(out)
    return out


def tiny_batch(student: str, hidden: int = 32):
    """A StudentBatch of two real pairs with random teacher features of size `hidden`."""
    pairs = [("The report was adopted by the committee.", "Le rapport a été adopté par le comité."),
             ("Peace is near, they said.", "Der Frieden ist nahe, sagten sie.")]
    words = [split_words(en) for en, _ in pairs]
    g = np.random.default_rng(0)
    states = [g.standard_normal((len(w), hidden)).astype(np.float32) for w in words]
    cls = [g.standard_normal(hidden).astype(np.float32) for _ in words]
    read = Sentences(words, [en for en, _ in pairs], [x for _, x in pairs], states, cls, None)
    keys = [PairKey(0, 0, 0), PairKey(0, 1, 1)]
    part = Part(keys, keys, read, read)
    return build_student_batch(AutoTokenizer.from_pretrained(student), part, objs.inputs(objs.OBJECTIVES), MaskingConfig())
