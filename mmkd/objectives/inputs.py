"""The student inputs of a pair (s, t) (paper 3.1–3.4) and what they carry of the teacher.

An input is built once per micro-batch for every objective that reads it (SentA and StrucA share
the sentence input). Each is a dataclass: the tokens the student encoder reads (`Tokens`) and what
its loss takes besides the student's states, under the loss's own parameter names (the teacher
features included), so the teacher's features reach the losses by one route:
input -> model forward -> objective forward -> loss.

- `masked_pair` (TLM):       `[CLS] s [SEP] t [SEP]`, 15% of the tokens of both sides masked (80/10/10);
- `word_masked_pair` (XWCL): `[CLS] s' [SEP] t [SEP]`, 15% of the English *words* whole-word masked,
                             source side only; `word_pos[b, i]` is the position of the first sub-token of
                             English word i (0 if the student's max length cut it off), `masked[b, i]`
                             the anchors of eq. (1), with the teacher's word states and word mask;
- `sentence` (SentA, StrucA): `[CLS] t [SEP]` alone, with the teacher's [CLS] of s.

Token types and positions of the pair inputs: segment 0 for `[CLS] s [SEP]`, segment 1 for
`t [SEP]`, positions 0..L-1 across both, exactly how mBERT saw sentence pairs in pre-training
(NSP); other families follow their tokenizer's conventions. The student reads both sentences as
text, as the paper does (not a pre-split word list, which would give a sentencepiece student a `▁`
before every punctuation mark); cached English word i is found in it through character offsets
(`words.align_by_offsets`): its state is the first sub-token covering the word's first character.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from mmkd.masking import example_rng, mask_tokens, mask_words
from mmkd.words import align_by_offsets, blank_tokens, word_starts

_MASKED_PAIR, _WORD_MASKED_PAIR = 1, 2   # purposes for example_rng (the masks of the two pair inputs)


@dataclass
class MaskingConfig:
    max_length: int = 128
    mlm_probability: float = 0.15
    seed: int = 0
    segments: bool = True      # segment ids (BERT: type_vocab_size 2); False for XLM-R, DistilBERT, DeBERTa-v3


def special_ids(tokenizer) -> np.ndarray:
    return np.array(sorted(set(tokenizer.all_special_ids)))


def random_token_ids(tokenizer) -> np.ndarray:
    """Ids a 10%-random replacement may draw: the vocabulary without special tokens."""
    ids = np.arange(len(tokenizer))
    return ids[~np.isin(ids, special_ids(tokenizer))]


def pad(rows: list[np.ndarray], value: int) -> Tensor:
    """Rows right-padded into one int64 tensor [B, max length]."""
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


class Pairs:
    """What the inputs of one micro-batch are built from: its pairs' keys, the cached English word
    lists, the target texts, the teacher features, and the tokenizer. The pair encoding (shared by
    both pair inputs) is made once, when first needed."""

    def __init__(self, tokenizer, keys, words, english, targets, teacher, masking: MaskingConfig, random_ids: np.ndarray):
        self.tokenizer, self.keys, self.words, self.english, self.targets = tokenizer, keys, words, english, targets
        self.teacher, self.masking, self.random_ids = teacher, masking, random_ids

    @cached_property
    def encoding(self):
        return self.tokenizer(list(self.english), list(self.targets), truncation="longest_first",
                              max_length=self.masking.max_length, return_token_type_ids=self.masking.segments,
                              return_offsets_mapping=True)

    def alignment(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        """(token_word, first sub-token position of each cached word) of pair input row `b`."""
        starts = word_starts(self.english[b], self.words[b])
        ids = self.encoding["input_ids"][b]
        return align_by_offsets(self.english[b], starts, self.encoding["offset_mapping"][b],
                                self.encoding.sequence_ids(b), 0, blank_tokens(self.tokenizer, ids))

    @cached_property
    def rows(self) -> list[np.ndarray]:
        return [np.array(ids, dtype=np.int64) for ids in self.encoding["input_ids"]]

    def tokens(self, ids: list[np.ndarray]) -> dict:
        """The `Tokens` fields of a pair input whose token ids are `ids` (the pair encoding's, masked)."""
        enc = self.encoding
        out = {"input_ids": pad(ids, self.tokenizer.pad_token_id),
               "attention_mask": pad([np.ones(len(r), np.int64) for r in self.rows], 0)}
        if "token_type_ids" in enc:
            out["token_type_ids"] = pad([np.array(t, dtype=np.int64) for t in enc["token_type_ids"]], 0)
        return out


@dataclass(kw_only=True)
class Tokens:
    """What the student encoder reads: [B, L] token ids, attention mask and (BERT) segment ids."""
    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Tensor | None = None

    def encoder_kwargs(self) -> dict:
        kw = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            kw["token_type_ids"] = self.token_type_ids
        return kw

    def to(self, device):
        """The same input with every tensor on `device`."""
        return dataclasses.replace(self, **{f.name: value.to(device, non_blocking=True)
                                            for f in dataclasses.fields(self)
                                            if isinstance(value := getattr(self, f.name), Tensor)})


@dataclass(kw_only=True)
class MaskedPair(Tokens):
    """TLM's input; `labels` is `losses.tlm_loss`'s: the original token id at masked positions, -100 elsewhere."""
    labels: Tensor


@dataclass(kw_only=True)
class WordMaskedPair(Tokens):
    """XWCL's input; the fields after `word_pos` are `losses.xwcl_loss`'s parameters of those names."""
    word_pos: Tensor            # [B, W] position of English word i's first sub-token (0 if cut off)
    teacher_words: Tensor       # [B, W, Ht] the teacher's word states of the unmasked sentence
    word_mask: Tensor           # [B, W] word i exists (in the cache and in the student's input)
    masked: Tensor              # [B, W] word i was masked: the anchors of eq. (1)


@dataclass(kw_only=True)
class Sentence(Tokens):
    """SentA's and StrucA's input `[CLS] t [SEP]`, with the teacher's sentence vectors of s: its [CLS]
    and (format-3 caches, the online teacher) its mean pooling."""
    teacher_cls: Tensor
    teacher_mean: Tensor | None = None

    def teacher(self, vector: str) -> Tensor | None:
        """The teacher's sentence vector by name: cls or mean."""
        return getattr(self, f"teacher_{vector}")


@dataclass(frozen=True)
class InputSpec:
    name: str
    source: str                           # "pairs" (the pair inputs' pairs) or "sentences"
    build: Callable[[Pairs], Tokens]


def _masked_pair(p: Pairs) -> MaskedPair:
    special = set(special_ids(p.tokenizer).tolist())
    ids_out, labels_out = [], []
    for b, ids in enumerate(p.rows):
        rng = example_rng(p.masking.seed, p.keys[b][0], p.keys[b][1], _MASKED_PAIR)
        cand = np.array([i not in special for i in ids.tolist()])
        new, labels = mask_tokens(ids, cand, rng, p.tokenizer.mask_token_id, p.random_ids, p.masking.mlm_probability)
        ids_out.append(new)
        labels_out.append(labels)
    return MaskedPair(**p.tokens(ids_out), labels=pad(labels_out, -100))


def _word_masked_pair(p: Pairs) -> WordMaskedPair:
    width = p.teacher.word_mask.shape[1]
    ids_out = []
    word_pos = np.zeros((len(p.rows), width), dtype=np.int64)
    masked = np.zeros((len(p.rows), width), dtype=bool)
    for b, ids in enumerate(p.rows):
        n_words = len(p.words[b])
        token_word, pos = p.alignment(b)
        rng = example_rng(p.masking.seed, p.keys[b][0], p.keys[b][1], _WORD_MASKED_PAIR)
        new, m = mask_words(ids, token_word, n_words, rng, p.tokenizer.mask_token_id, p.random_ids,
                            p.masking.mlm_probability)
        present = pos >= 0
        word_pos[b, :n_words] = np.where(present, pos, 0)
        masked[b, :n_words] = m & present
        ids_out.append(new)
    return WordMaskedPair(**p.tokens(ids_out), word_pos=torch.from_numpy(word_pos), teacher_words=p.teacher.word_states,
                          word_mask=p.teacher.word_mask, masked=torch.from_numpy(masked))


def _sentence(p: Pairs) -> Sentence:
    enc = p.tokenizer(p.targets, truncation=True, max_length=p.masking.max_length, padding=True, return_tensors="pt",
                      return_token_type_ids=p.masking.segments)
    return Sentence(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    token_type_ids=enc.get("token_type_ids"), teacher_cls=p.teacher.cls,
                    teacher_mean=p.teacher.mean)        # mean: format-3 caches and the online teacher


MASKED_PAIR = InputSpec("masked_pair", "pairs", _masked_pair)
WORD_MASKED_PAIR = InputSpec("word_masked_pair", "pairs", _word_masked_pair)
SENTENCE = InputSpec("sentence", "sentences", _sentence)
