"""The three student inputs of a pair (s, t) (paper 3.1–3.4), built from the cached word list.

- TLM:   `[CLS] s [SEP] t [SEP]`, 15% of the tokens of both sides masked (80/10/10).
- XWCL:  `[CLS] s' [SEP] t [SEP]`, s' = s with 15% of its *words* whole-word masked (80/10/10);
         `word_pos[b, i]` is the position of the first sub-token of English word i (0 if the
         student's max length cut it off), `masked[b, i]` marks the anchors of eq. (1).
- Sent:  `[CLS] t [SEP]` alone, for SentA and StrucA.

Token types and positions of the pair inputs: segment 0 for `[CLS] s [SEP]`, segment 1 for
`t [SEP]`, positions 0..L-1 running across both: exactly how mBERT saw sentence pairs in
pre-training (NSP). XLM's TLM restarts positions at t and adds language embeddings; mBERT has no
language embeddings, so we keep its own convention. English is given to the tokenizer as the
cached word list (`is_split_into_words=True`) so word i is the cache's word i.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from mmkd.cache.reader import TeacherBatch
from mmkd.masking import example_rng, mask_tokens, mask_words
from mmkd.words import first_subtoken_positions

_MASKED_PAIR, _WORD_MASKED_PAIR = 1, 2   # purposes for example_rng (the masks of the two pair inputs)


@dataclass
class StudentBatch:
    """One micro-batch, all tensors (moved to the device with `.to`)."""
    masked_pair_input_ids: torch.Tensor | None = None
    masked_pair_attention_mask: torch.Tensor | None = None
    masked_pair_token_type_ids: torch.Tensor | None = None
    masked_pair_labels: torch.Tensor | None = None
    word_masked_pair_input_ids: torch.Tensor | None = None
    word_masked_pair_attention_mask: torch.Tensor | None = None
    word_masked_pair_token_type_ids: torch.Tensor | None = None
    word_pos: torch.Tensor | None = None      # [B, W] long
    masked_words: torch.Tensor | None = None        # [B, W] bool: anchors (masked and present)
    sent_input_ids: torch.Tensor | None = None
    sent_attention_mask: torch.Tensor | None = None
    sent_token_type_ids: torch.Tensor | None = None
    teacher_words: torch.Tensor | None = None      # [B, W, Ht]
    teacher_word_mask: torch.Tensor | None = None  # [B, W]
    teacher_cls: torch.Tensor | None = None        # [B, Ht]
    pair_keys: list | None = None                  # [(corpus_index, stream_index, pair_id)] of the pair inputs
    sent_keys: list | None = None                  # ... of the sentence input (the same pairs unless assigned apart)

    def to(self, device) -> "StudentBatch":
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        return StudentBatch(**{k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                               for k, v in kw.items()})


@dataclass
class BatchConfig:
    max_length: int = 128
    mlm_probability: float = 0.15
    seed: int = 0
    segments: bool = True      # segment ids (BERT: type_vocab_size 2); False for XLM-R, DistilBERT, DeBERTa-v3


def _special_ids(tokenizer) -> np.ndarray:
    return np.array(sorted(set(tokenizer.all_special_ids)))


def random_token_ids(tokenizer) -> np.ndarray:
    """Ids a 10%-random replacement may draw: the vocabulary without special tokens."""
    ids = np.arange(len(tokenizer))
    return ids[~np.isin(ids, _special_ids(tokenizer))]


def _pad(rows: list[np.ndarray], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = np.full((len(rows), width), value, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = r
    return torch.from_numpy(out)


def build_student_batch(tokenizer, teacher: TeacherBatch, targets: list[str], keys: list[tuple[int, int, int]],
                        needed: set[str], cfg: BatchConfig, random_ids: np.ndarray | None = None,
                        sentences: tuple[TeacherBatch, list[str], list] | None = None) -> StudentBatch:
    """The student inputs `needed` (of mmkd.objectives.INPUTS) for a micro-batch.
    keys[b] = (corpus_index, stream_index, pair_id).

    The sentence input (SentA, StrucA) is built from the same pairs, or from `sentences` =
    (teacher features, target texts, keys) of another set when pairs are assigned to processes
    separately for it (by target length, so it pads little)."""
    if random_ids is None:
        random_ids = random_token_ids(tokenizer)
    sent_teacher, sent_targets, sent_keys = sentences if sentences is not None else (teacher, targets, keys)
    batch = StudentBatch(pair_keys=list(keys), sent_keys=list(sent_keys), teacher_word_mask=teacher.word_mask)
    pad_id = tokenizer.pad_token_id
    if {"masked_pair", "word_masked_pair"} & needed:
        t_words = [t.split() for t in targets]
        enc = tokenizer(teacher.words, t_words, is_split_into_words=True, truncation="longest_first",
                        max_length=cfg.max_length, return_token_type_ids=cfg.segments)
        special = set(_special_ids(tokenizer).tolist())
        rows = [np.array(ids, dtype=np.int64) for ids in enc["input_ids"]]
        types = [np.array(t, dtype=np.int64) for t in enc["token_type_ids"]] if "token_type_ids" in enc else None
        attention = _pad([np.ones(len(r), np.int64) for r in rows], 0)
        if "masked_pair" in needed:
            ids_out, labels_out = [], []
            for b, ids in enumerate(rows):
                rng = example_rng(cfg.seed, keys[b][0], keys[b][1], _MASKED_PAIR)
                cand = np.array([i not in special for i in ids.tolist()])
                new, labels = mask_tokens(ids, cand, rng, tokenizer.mask_token_id, random_ids, cfg.mlm_probability)
                ids_out.append(new)
                labels_out.append(labels)
            batch.masked_pair_input_ids, batch.masked_pair_labels = _pad(ids_out, pad_id), _pad(labels_out, -100)
            batch.masked_pair_attention_mask = attention
            batch.masked_pair_token_type_ids = _pad(types, 0) if types else None
        if "word_masked_pair" in needed:
            width = teacher.word_mask.shape[1]
            ids_out = []
            word_pos = np.zeros((len(rows), width), dtype=np.int64)
            masked = np.zeros((len(rows), width), dtype=bool)
            for b, ids in enumerate(rows):
                n_words = len(teacher.words[b])
                wid, sid = enc.word_ids(b), enc.sequence_ids(b)
                token_word = np.array([w if (w is not None and s == 0) else -1 for w, s in zip(wid, sid)])
                rng = example_rng(cfg.seed, keys[b][0], keys[b][1], _WORD_MASKED_PAIR)
                new, m = mask_words(ids, token_word, n_words, rng, tokenizer.mask_token_id, random_ids,
                                    cfg.mlm_probability)
                pos = first_subtoken_positions(wid, n_words, sid, 0)
                present = pos >= 0
                word_pos[b, :n_words] = np.where(present, pos, 0)
                masked[b, :n_words] = m & present
                ids_out.append(new)
            batch.word_masked_pair_input_ids = _pad(ids_out, pad_id)
            batch.word_masked_pair_attention_mask = attention
            batch.word_masked_pair_token_type_ids = _pad(types, 0) if types else None
            batch.word_pos = torch.from_numpy(word_pos)
            batch.masked_words = torch.from_numpy(masked)
            batch.teacher_words = teacher.word_states
    if "sentence" in needed:
        enc = tokenizer(sent_targets, truncation=True, max_length=cfg.max_length, padding=True, return_tensors="pt",
                        return_token_type_ids=cfg.segments)
        batch.sent_input_ids, batch.sent_attention_mask = enc["input_ids"], enc["attention_mask"]
        batch.sent_token_type_ids = enc.get("token_type_ids")
        batch.teacher_cls = sent_teacher.cls
    return batch
