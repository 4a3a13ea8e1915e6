"""Masking statistics and the student's word positions on real sentences of several scripts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from mmkd.batching import PairKey, Part, build_student_batch
from mmkd.cache.reader import Sentences
from mmkd.masking import mask_tokens, mask_words
from mmkd.objectives import OBJECTIVES, inputs
from mmkd.objectives.inputs import MASKED_PAIR, WORD_MASKED_PAIR, MaskingConfig, random_token_ids
from mmkd.schedule import BalancedSchedule, split_for
from mmkd.words import split_words


def test_token_masking_statistics():
    """15% of the candidates per sequence; of those 80% [MASK], 10% random, 10% kept."""
    L, mask_id = 200, 4
    ids = np.arange(10, 10 + L)
    cand = np.ones(L, dtype=bool)
    cand[[0, L - 1]] = False          # [CLS], [SEP] never masked
    vocab = np.arange(5000, 9000)   # disjoint from ids, so a random replacement is visible
    outcome = {"mask": 0, "random": 0, "keep": 0}
    for i in range(400):
        new, labels = mask_tokens(ids, cand, np.random.default_rng(i), mask_id, vocab)
        chosen = labels != -100
        assert chosen.sum() == round(0.15 * 198)                       # exact count per sequence
        assert not chosen[[0, L - 1]].any()
        assert np.array_equal(labels[chosen], ids[chosen])
        assert np.array_equal(new[~chosen], ids[~chosen])              # nothing else touched
        outcome["mask"] += int((new[chosen] == mask_id).sum())
        outcome["keep"] += int((new[chosen] == ids[chosen]).sum())
        outcome["random"] += int(((new[chosen] != mask_id) & (new[chosen] != ids[chosen])).sum())
    total = sum(outcome.values())
    assert outcome["mask"] / total == pytest.approx(0.8, abs=0.01)
    assert outcome["random"] / total == pytest.approx(0.1, abs=0.01)
    assert outcome["keep"] / total == pytest.approx(0.1, abs=0.01)


def test_whole_word_masking_is_per_word_and_source_side_only():
    # [CLS] w0 w0 w1 w2 w2 w2 ... [SEP] target tokens [SEP]; 40 English words of 1-3 pieces.
    pieces = [1 + (w % 3) for w in range(40)]
    token_word = np.array([-1] + [w for w, n in enumerate(pieces) for _ in range(n)] + [-1] + [-1] * 30 + [-1])
    ids = np.arange(100, 100 + len(token_word))
    vocab = np.arange(5000, 9000)   # disjoint from ids, so a random replacement is visible
    kinds = {"mask": 0, "random": 0, "keep": 0}
    for i in range(2000):
        new, masked = mask_words(ids, token_word, 40, np.random.default_rng(i), 4, vocab)
        assert masked.sum() == 6                                   # round(0.15 * 40)
        changed = new != ids
        assert not changed[token_word < 0].any()                    # target side and specials untouched
        for w in np.flatnonzero(masked):
            pos = np.flatnonzero(token_word == w)
            if (new[pos] == 4).all():
                kinds["mask"] += 1
            elif not changed[pos].any():
                kinds["keep"] += 1
            else:
                assert changed[pos].all() and not (new[pos] == 4).any()   # all pieces random together
                kinds["random"] += 1
        for w in np.flatnonzero(~masked):
            assert not changed[token_word == w].any()
    total = sum(kinds.values())
    # 12,000 masked words: binomial std <= 0.004, bounds at 4 std.
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.015)
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.011)


SENTENCES = [
    ("The committee's report (2019) was adopted: 25% of vessels must be inspected.",
     "Le rapport du comité (2019) a été adopté : 25 % des navires doivent être inspectés."),
    ("He visited 北京 and Zoë's café in 2020.", "他在2020年访问了北京和佐伊的咖啡馆。"),
    ("The word नमस्ते means hello.", "नमस्ते शब्द का अर्थ हैलो है।"),
    ("Peace, they said, is near.", "قالوا إن السلام قريب."),
]


def _read(words: list[list[str]], english: list[str], targets: list[str], hidden=8) -> Sentences:
    g = torch.Generator().manual_seed(0)
    return Sentences(words, english, targets, [torch.randn(len(w), hidden, generator=g).numpy() for w in words],
                     [np.zeros(hidden, np.float32) for _ in words], None)


def build(tok, words, targets, keys, specs, cfg=None, english=None):
    """The student inputs of these pairs (the pair inputs and the sentence input on the same pairs);
    `english` defaults to the words joined by spaces."""
    keys = [PairKey(*k) for k in keys]
    english = english if english is not None else [" ".join(w) for w in words]
    read = _read(words, english, targets)
    part = Part(keys, keys, read, read)
    return build_student_batch(tok, part, specs, cfg or MaskingConfig())


def naive_starts(text: str, words: list[str]) -> list[int]:
    """Where each word starts, found by plain string search left to right (the texts here are NFC and
    hold no control characters, so every word is a substring)."""
    out, cursor = [], 0
    for w in words:
        at = text.index(w, cursor)
        out.append(at)
        cursor = at + len(w)
    return out


def check_word_positions(tok, english, targets, cfg):
    """Every cached word's student position is the first token of `[CLS] s [SEP] t [SEP]` (encoded from
    the raw text) that covers the word's first character, in the English segment, never a token of
    only white space (a bare sentencepiece `▁`)."""
    words = [split_words(en) for en in english]
    keys = [(0, i, i) for i in range(len(english))]
    batch = build(tok, words, targets, keys, inputs(OBJECTIVES), cfg, english=english)
    xwcl = batch.inputs["word_masked_pair"]
    ref = tok(english, targets, return_offsets_mapping=True, return_token_type_ids=cfg.segments)
    for b, ws in enumerate(words):
        offsets, seq = ref["offset_mapping"][b], ref.sequence_ids(b)
        for w, start in zip(range(len(ws)), naive_starts(english[b], ws)):
            p = int(xwcl.word_pos[b, w])
            pieces = tok.convert_ids_to_tokens(ref["input_ids"][b])
            covering = [t for t, ((a, e), s) in enumerate(zip(offsets, seq))
                        if s == 0 and a <= start < e and pieces[t] not in ("▁", "Ġ")]
            assert covering and p == covering[0], (ws[w], p, covering)
            a, e = offsets[p]
            assert english[b][a:e].strip(), f"word {ws[w]!r} maps to a token of white space only"
            assert tok.convert_ids_to_tokens(ref["input_ids"][b][p]) not in ("▁", "Ġ")
        # The sequence the student reads is the raw text's own encoding, masks aside: only the sub-tokens
        # of masked words differ.
        n = len(ref["input_ids"][b])
        assert xwcl.input_ids.shape[1] >= n
        changed = (xwcl.input_ids[b, :n] != torch.tensor(ref["input_ids"][b])).numpy()
        masked = xwcl.masked[b, :len(ws)].numpy()
        starts = naive_starts(english[b], ws) + [len(english[b])]
        masked_spans = [(starts[w], starts[w + 1]) for w in np.flatnonzero(masked)]

        def in_masked_word(t):
            a, e = offsets[t]
            first = a + len(english[b][a:e]) - len(english[b][a:e].lstrip())
            return seq[t] == 0 and any(lo <= first < hi for lo, hi in masked_spans)

        assert all(in_masked_word(t) for t in np.flatnonzero(changed)), "a token outside the masked words changed"
    return batch, ref


def test_student_word_positions_point_at_word_i(tiny_student):
    tok = AutoTokenizer.from_pretrained(tiny_student)
    english, targets = [en for en, _ in SENTENCES], [x for _, x in SENTENCES]
    batch, ref = check_word_positions(tok, english, targets, MaskingConfig(max_length=128))
    words = [split_words(en) for en in english]
    xwcl, tlm = batch.inputs["word_masked_pair"], batch.inputs["masked_pair"]
    for b, ws in enumerate(words):
        # Segment ids: 0 for [CLS] s [SEP], 1 for t [SEP]; positions are implicit 0..L-1.
        types = xwcl.token_type_ids[b, :len(ref["input_ids"][b])].tolist()
        assert types == ref["token_type_ids"][b]
        first_sep = ref["input_ids"][b].index(tok.sep_token_id)
        assert set(types[:first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
        # WordPiece splits at every punctuation mark and CJK character, as split_words does: every
        # word has a token of its own, so every word can be an anchor.
        anchors = xwcl.masked[b, :len(ws)].numpy()
        assert anchors.sum() == max(1, round(0.15 * len(ws)))
    # SentA/StrucA input is the target alone.
    sent = tok(targets[0])["input_ids"]
    assert batch.inputs["sentence"].input_ids[0, :len(sent)].tolist() == sent
    # TLM masks both sides.
    labels = tlm.labels
    types = tlm.token_type_ids
    masked_types = types[labels != -100]
    assert (masked_types == 0).any() and (masked_types == 1).any()


def test_sentencepiece_student_reads_the_raw_sentence_and_no_word_maps_to_a_bare_piece(tmp_path, multilingual_texts):
    """A sentencepiece-style student (XLM-R's `▁` convention): words are found through offsets, a
    punctuation mark after a word is not given a `▁` of its own, and no word's state is a bare `▁`."""
    from families import xlmr

    folder = xlmr(multilingual_texts[:4000], tmp_path / "xlmr")
    tok = AutoTokenizer.from_pretrained(folder)
    english = [en for en, _ in SENTENCES] + ["Wait... what?! It costs $3.50 (or 3,50 €).", "He said: «no»."]
    targets = [x for _, x in SENTENCES] + ["Attends... quoi ?! Ça coûte 3,50 $.", "Il a dit : «non»."]
    batch, ref = check_word_positions(tok, english, targets, MaskingConfig(max_length=128, segments=False))
    # The student's sequence is the raw text's encoding: "hello." is not read as "hello ▁.".
    plain = tok(english[3])["input_ids"]
    split = tok(split_words(english[3]), is_split_into_words=True)["input_ids"]
    assert batch.inputs["sentence"] is not None and plain != split
    first_segment = ref.sequence_ids(3).index(1)            # <s> s </s></s> t </s>
    assert ref["input_ids"][3][:first_segment - 2] == plain[:-1]
    assert "▁" in tok.convert_ids_to_tokens(split) and tok.convert_ids_to_tokens(split).count("▁") > \
        tok.convert_ids_to_tokens(plain).count("▁")


def test_words_sharing_a_token_are_never_anchors():
    """A token that covers two cached words (a sentencepiece piece `日本`, `U.S.`) belongs to the first;
    the second word's position is that token, and it is never masked on its own (the student would
    still see it)."""
    from mmkd.words import align_by_offsets, word_starts

    text = "in 日本 now"
    words = split_words(text)                          # in 日 本 now
    starts = word_starts(text, words)
    assert starts.tolist() == [0, 3, 4, 6]
    offsets = [(0, 0), (0, 2), (2, 5), (5, 9), (9, 9)]      # <s> ▁in ▁日本 ▁now </s>
    seq = [None, 0, 0, 0, None]
    token_word, pos = align_by_offsets(text, starts, offsets, seq)
    assert token_word.tolist() == [-1, 0, 1, 3, -1]
    assert pos.tolist() == [1, 2, 2, 3]
    # A bare `▁` covering only the space belongs to no word and is no word's position; nor is one that
    # reports the span of the next character (e5's tokenizer does that before `北京`).
    text = "end ."
    starts = word_starts(text, split_words(text))
    token_word, pos = align_by_offsets(text, starts, [(0, 3), (3, 4), (4, 5)], [0, 0, 0])
    assert token_word.tolist() == [0, -1, 1] and pos.tolist() == [0, 2]
    text = "and 北京"
    starts = word_starts(text, split_words(text))
    blank = np.array([False, True, False])
    token_word, pos = align_by_offsets(text, starts, [(0, 3), (4, 5), (4, 6)], [0, 0, 0], blank=blank)
    assert token_word.tolist() == [0, -1, 1] and pos.tolist() == [0, 2, 2]
    # Kept words (the teacher dropped one) are found in order; a word past the text is -1.
    assert word_starts("a b c", ["a", "c"]).tolist() == [0, 4]
    assert word_starts("a b", ["a", "z"]).tolist() == [0, -1]
    # Offsets refer to the text as given: a decomposed é (e + U+0301) and a zero-width space before a word.
    text = "Zoe\u0301 said\u200b hi"
    assert word_starts(text, split_words(text)).tolist() == [0, 5, 11]


def test_masks_do_not_depend_on_the_batch_split(tiny_student):
    """Same example, same masks, whether it is alone or in a batch (needed for exact multi-process
    and resume equivalence)."""
    tok = AutoTokenizer.from_pretrained(tiny_student)
    words = [split_words(en) for en, _ in SENTENCES]
    targets = [x for _, x in SENTENCES]
    keys = [(0, 10 + i, i) for i in range(len(SENTENCES))]
    specs = [MASKED_PAIR, WORD_MASKED_PAIR]
    full = build(tok, words, targets, keys, specs).inputs
    one = build(tok, words[2:3], targets[2:3], keys[2:3], specs).inputs
    n = int(one["masked_pair"].attention_mask.sum())
    for name in ("masked_pair", "word_masked_pair"):
        assert torch.equal(full[name].input_ids[2, :n], one[name].input_ids[0, :n])
    other_seed = build(tok, words, targets, keys, specs, MaskingConfig(seed=1)).inputs
    assert not torch.equal(other_seed["masked_pair"].labels, full["masked_pair"].labels)


def test_random_replacements_never_draw_special_tokens(tiny_student):
    tok = AutoTokenizer.from_pretrained(tiny_student)
    assert not set(random_token_ids(tok).tolist()) & set(tok.all_special_ids)


def test_balanced_schedule():
    s = BalancedSchedule([10, 4, 7], global_batch=6, seed=3)
    assert s.steps_per_epoch == 4
    seen = {0: [], 1: [], 2: []}
    for step in range(7):
        batch = s.batch(step)
        assert [c for c, _, _ in batch] == [0, 1, 2, 0, 1, 2]           # balanced and interleaved
        for c, _, p in batch:
            seen[c].append(p)
    # Each stream walks whole permutations: the first 4 pairs of language 1 are a permutation of 0..3.
    assert sorted(seen[1][:4]) == [0, 1, 2, 3] and sorted(seen[1][4:8]) == [0, 1, 2, 3]
    assert sorted(seen[0][:10]) == list(range(10))
    assert s.batch(5) == BalancedSchedule([10, 4, 7], 6, 3).batch(5)      # a function of (seed, step)
    parts = split_for(s.batch(0), rank=1, world=2, accumulation=2)
    assert [len(p) for p in parts] == [2, 1]
    assert sorted(x for r in range(2) for p in split_for(s.batch(0), r, 2, 2) for x in p) == sorted(s.batch(0))


@pytest.mark.parametrize("world,accumulation", [(2, 1), (2, 2), (8, 1), (3, 2), (1, 4)])
def test_length_assignment_keeps_micro_batch_members_and_counts(world, accumulation):
    from mmkd.schedule import split_by_length

    batch = [(0, i, 100 + i) for i in range(48)]
    lengths = np.random.default_rng(world * 10 + accumulation).integers(5, 120, size=48)
    for m in range(accumulation):
        want = [split_for(batch, r, world, accumulation)[m] for r in range(world)]
        got = [split_by_length(batch, lengths, r, world, accumulation)[m] for r in range(world)]
        assert sorted(x for part in got for x in part) == sorted(x for part in want for x in part)
        assert [len(p) for p in got] == [len(p) for p in want]
        # Longest first and contiguous: no pair of process r is shorter than any pair of process r + 1.
        lens = [[lengths[x[1]] for x in part] for part in got]
        for a, b in zip(lens, lens[1:]):
            if a and b:
                assert min(a) >= max(b)
