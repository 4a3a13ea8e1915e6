"""English word splitting, and the map from word i to a tokenizer's first sub-token of word i.

XWCL (paper eq. 1) compares the student's and the teacher's state of the *same word*, but the two
models have different vocabularies. So the English side is split into words once, by
`split_words`, the word list is stored in the teacher cache, and each model finds its own first
sub-token of word i with `first_subtoken_positions`.

The rule mirrors BERT's BasicTokenizer (whitespace, then every punctuation mark and every CJK
ideograph is a word of its own) so that a BERT-family tokenizer never merges two of our words and
never splits one of them across a word boundary. It does not lower-case or strip accents: that is
each tokenizer's own business. Bump `WORD_RULE_VERSION` whenever the output of `split_words` can
change; the cache records it and the trainer refuses a cache made with another rule.
"""

from __future__ import annotations

import unicodedata

import numpy as np
from tokenizers import normalizers, pre_tokenizers

WORD_RULE_VERSION = "bert-basic-v1"


# BERT's own basic tokenization, from the Rust `tokenizers` library: ~30 us a sentence, which
# matters at paper scale (10.5M sentences). Accents and case are kept (no lowercase/strip).
_NORMALIZER = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                         strip_accents=False, lowercase=False)
_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()


def split_words(text: str) -> list[str]:
    """Split a sentence into words (rule `WORD_RULE_VERSION`).

    NFC-normalise; delete control/format characters, NUL and U+FFFD; split on whitespace; every
    punctuation mark (Unicode P* and ASCII symbols) and every CJK ideograph is a word of its own.

    >>> split_words("Don't panic, Zoë: 日本語!")
    ['Don', "'", 't', 'panic', ',', 'Zoë', ':', '日', '本', '語', '!']
    """
    normalised = _NORMALIZER.normalize_str(unicodedata.normalize("NFC", text))
    return [w for w, _ in _PRE_TOKENIZER.pre_tokenize_str(normalised)]


def first_subtoken_positions(word_ids: list[int | None], n_words: int,
                             sequence_ids: list[int | None] | None = None,
                             sequence: int = 0) -> np.ndarray:
    """Position of the first sub-token of each word, -1 for a word that has none.

    `word_ids` / `sequence_ids` are a fast tokenizer's `BatchEncoding.word_ids(i)` and
    `.sequence_ids(i)` for an input encoded with `is_split_into_words=True`; `sequence` picks the
    first (0) or second (1) segment of a pair input. A word is missing when truncation cut it off.
    """
    pos = np.full(n_words, -1, dtype=np.int64)
    for t, w in enumerate(word_ids):
        if w is None or (sequence_ids is not None and sequence_ids[t] != sequence):
            continue
        if w < n_words and pos[w] < 0:
            pos[w] = t
    return pos


def require_fast(tokenizer) -> None:
    """Word alignment needs `word_ids()`, which only fast (Rust) tokenizers provide."""
    if not getattr(tokenizer, "is_fast", False):
        from mmkd.errors import MMKDError
        raise MMKDError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} is not a fast tokenizer; "
            "mmkd needs word_ids() to map words to sub-tokens: give a model whose folder has a tokenizer.json "
            "(a fast tokenizer; `tokenizer.save_pretrained` of AutoTokenizer.from_pretrained(..., use_fast=True) writes one)")
