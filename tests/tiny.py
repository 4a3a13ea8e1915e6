"""Tiny BERT models and WordPiece tokenizers trained on the shared sample data (offline, seconds)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForPreTraining, BertModel, PreTrainedTokenizerFast

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: list[str], vocab_size: int, out: Path) -> PreTrainedTokenizerFast:
    """A cased BERT WordPiece tokenizer (like bert-base-cased / mBERT) trained on `texts`."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=False, lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=512)
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
    import numpy as np
    from transformers import AutoTokenizer

    from mmkd.batching import BatchConfig, build_student_batch
    from mmkd.objectives import INPUTS
    from mmkd.cache.reader import TeacherBatch
    from mmkd.words import split_words

    pairs = [("The report was adopted by the committee.", "Le rapport a été adopté par le comité."),
             ("Peace is near, they said.", "Der Frieden ist nahe, sagten sie.")]
    words = [split_words(en) for en, _ in pairs]
    g = np.random.default_rng(0)
    teacher = TeacherBatch.from_sentences([g.standard_normal((len(w), hidden)).astype(np.float32) for w in words],
                                          [g.standard_normal(hidden).astype(np.float32) for _ in words], words)
    return build_student_batch(AutoTokenizer.from_pretrained(student), teacher, [x for _, x in pairs],
                               [(0, 0, 0), (0, 1, 1)], set(INPUTS), BatchConfig())
