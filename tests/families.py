"""Tiny students of the multilingual families users pick after mBERT, each with a tokenizer of its
own kind trained on the shared sample: XLM-R (SentencePiece-style Unigram, `<s> A </s></s> B </s>`,
one token type), DistilBERT (WordPiece, no token types), DeBERTa-v2/v3 (Unigram, [CLS]/[SEP])."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast


def _unigram(texts, vocab, specials, unk):
    """A SentencePiece-style Unigram tokenizer whose pieces and scores are the same every run
    (`tiny.piece_vocab`; the library's trainer breaks ties in hash-map order)."""
    from mmkd.tiny import piece_vocab, word_counts

    normalizer, pre = normalizers.NFKC(), pre_tokenizers.Metaspace()
    pieces = piece_vocab(word_counts(texts, normalizer, pre), vocab - len(specials), "")
    total = sum(c for _, c in pieces)
    scored = [(s, 0.0) for s in specials] + [(p, math.log(c / total)) for p, c in pieces]
    tok = Tokenizer(models.Unigram(scored, unk_id=specials.index(unk)))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.Metaspace()
    return tok


def xlmr(texts, out: Path, seed: int = 0) -> Path:
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = _unigram(texts, 4000, specials, "<unk>")
    s, e = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", s), ("</s>", e)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=512, model_input_names=["input_ids", "attention_mask"])
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=200, type_vocab_size=1,
                           pad_token_id=fast.pad_token_id, bos_token_id=s, eos_token_id=e)
    XLMRobertaForMaskedLM(cfg).save_pretrained(out)
    return out


def distilbert(texts, out: Path, seed: int = 0) -> Path:
    from mmkd.tiny import wordpiece_tokenizer
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    fast = wordpiece_tokenizer(texts, 4000, out, pair="[CLS] $A [SEP] $B [SEP]",
                               model_input_names=["input_ids", "attention_mask"])
    torch.manual_seed(seed)
    cfg = DistilBertConfig(vocab_size=len(fast), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=200, pad_token_id=fast.pad_token_id)
    DistilBertForMaskedLM(cfg).save_pretrained(out)
    return out


def deberta(texts, out: Path, seed: int = 0) -> Path:
    from transformers import DebertaV2Config, DebertaV2ForMaskedLM

    specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    tok = _unigram(texts, 4000, specials, "[UNK]")
    c, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", c), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = DebertaV2Config(vocab_size=len(fast), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=200, type_vocab_size=0,
                          relative_attention=True, position_buckets=32, max_relative_positions=64,
                          pos_att_type=["p2c", "c2p"], position_biased_input=False, pad_token_id=fast.pad_token_id)
    DebertaV2ForMaskedLM(cfg).save_pretrained(out)
    return out


FAMILIES = {"xlm-roberta": xlmr, "distilbert": distilbert, "deberta-v2": deberta}
