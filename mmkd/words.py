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
from tokenizers import PreTokenizedString, normalizers, pre_tokenizers
from mmkd.errors import MMKDError

WORD_RULE_VERSION = "bert-basic-v1"


# BERT's own basic tokenization, from the Rust `tokenizers` library: ~30 us a sentence, which
# matters at paper scale (10.5M sentences). Accents and case are kept (no lowercase/strip).
_NORMALIZER = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                         strip_accents=False, lowercase=False)
_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()
# The same normalisation with NFC inside, for word_starts: offsets must refer to the original text.
_NORMALIZE_NFC = normalizers.Sequence([normalizers.NFC(), _NORMALIZER])


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


def word_starts(text: str, words: list[str]) -> np.ndarray:
    """The character offset in `text` at which each of `words` starts, -1 for one not found.

    `words` is `split_words(text)` or the part of it a teacher kept (the cache keeps the words whose
    first sub-token the teacher saw: the same order, some left out), so each is matched to the next
    split word equal to it. Offsets are into the text as given, before normalisation."""
    pretok = PreTokenizedString(text)
    pretok.normalize(lambda normalized: _NORMALIZE_NFC.normalize(normalized))
    _PRE_TOKENIZER.pre_tokenize(pretok)
    splits = pretok.get_splits(offset_referential="original", offset_type="char")
    out = np.full(len(words), -1, dtype=np.int64)
    j = 0
    for i, word in enumerate(words):
        while j < len(splits) and splits[j][0] != word:
            j += 1
        if j == len(splits):
            break
        out[i] = splits[j][1][0]
        j += 1
    return out


def blank_tokens(tokenizer, ids) -> np.ndarray:
    """True for each token that stands for white space only: sentencepiece's bare `▁` (and byte-level
    BPE's `Ġ`). Its offsets cannot be trusted: a bare `▁` before `北京` reports the span of `北`."""
    return np.array([not t.strip("▁Ġ \t\n") for t in tokenizer.convert_ids_to_tokens(list(ids))], dtype=bool)


def align_by_offsets(text: str, starts: np.ndarray, offsets, sequence_ids, sequence: int = 0,
                     blank: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Student tokens <-> cached English words, through character offsets (the student reads `text`
    itself, not a pre-split word list).

    `offsets` / `sequence_ids`: the fast tokenizer's offset mapping and sequence ids of one encoded
    input, `sequence` the segment holding `text`; `starts`: `word_starts` of the cached words;
    `blank`: `blank_tokens` of the input (never a word's token).
    Returns (token_word [L]: the word holding each token's first non-space character, -1 for special
    tokens, the other segment, and tokens of only white space such as a bare sentencepiece `▁`;
    position [W]: the first token covering the word's first character, -1 for a word the input does
    not reach). A word's position is never a bare `▁`: that token stands for the space before it."""
    n = len(starts)
    token_word = np.full(len(offsets), -1, dtype=np.int64)
    position = np.full(n, -1, dtype=np.int64)
    order = np.argsort(starts, kind="stable")
    known = starts[order] >= 0
    sorted_starts, sorted_words = starts[order][known], order[known]
    for t, ((a, b), s) in enumerate(zip(offsets, sequence_ids)):
        if s != sequence or b <= a or (blank is not None and blank[t]):
            continue
        first = a
        while first < b and text[first].isspace():
            first += 1
        if first == b:
            continue                     # white space only (a bare `▁`)
        k = int(np.searchsorted(sorted_starts, first, side="right")) - 1
        if k >= 0:
            token_word[t] = sorted_words[k]
        lo, hi = np.searchsorted(sorted_starts, [first, b])
        for w in sorted_words[lo:hi]:
            if position[w] < 0:
                position[w] = t
    return token_word, position


def require_fast(tokenizer) -> None:
    """Word alignment needs `word_ids()`, which only fast (Rust) tokenizers provide."""
    if not getattr(tokenizer, "is_fast", False):
        raise MMKDError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', tokenizer)!r} is not a fast tokenizer; "
            "mmkd needs word_ids() to map words to sub-tokens: give a model whose folder has a tokenizer.json "
            "(a fast tokenizer; `tokenizer.save_pretrained` of AutoTokenizer.from_pretrained(..., use_fast=True) writes one)")
