"""Masking statistics and the student's word positions on real sentences of several scripts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from mmkd.batching import PairKey, Part, build_student_batch
from mmkd.cache.reader import TeacherBatch
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


def _teacher_batch(words: list[list[str]], hidden=8) -> TeacherBatch:
    g = torch.Generator().manual_seed(0)
    return TeacherBatch.from_sentences([torch.randn(len(w), hidden, generator=g).numpy() for w in words],
                                       [np.zeros(hidden, np.float32) for _ in words], words)


def build(tok, words, targets, keys, specs, cfg=None):
    """The student inputs of these pairs (the pair inputs and the sentence input on the same pairs)."""
    keys = [PairKey(*k) for k in keys]
    teacher = _teacher_batch(words)
    part = Part(keys, (words, targets), keys, (words, targets), teacher, teacher)
    return build_student_batch(tok, part, specs, cfg or MaskingConfig())


def test_student_word_positions_point_at_word_i(tiny_student):
    tok = AutoTokenizer.from_pretrained(tiny_student)
    words = [split_words(en) for en, _ in SENTENCES]
    targets = [x for _, x in SENTENCES]
    keys = [(0, i, i) for i in range(len(SENTENCES))]
    batch = build(tok, words, targets, keys, inputs(OBJECTIVES), MaskingConfig(max_length=128))
    xwcl, tlm = batch.inputs["word_masked_pair"], batch.inputs["masked_pair"]
    # Unmasked reference encoding of the same pairs.
    ref = tok(words, [t.split() for t in targets], is_split_into_words=True, return_token_type_ids=True)
    for b, ws in enumerate(words):
        ref_tokens = tok.convert_ids_to_tokens(ref["input_ids"][b])
        for i, w in enumerate(ws):
            p = int(xwcl["word_pos"][b, i])
            assert ref.word_ids(b)[p] == i and ref.sequence_ids(b)[p] == 0
            t = ref_tokens[p]
            assert t == tok.unk_token or w.startswith(t), (w, t)
        # Segment ids: 0 for [CLS] s [SEP], 1 for t [SEP]; positions are implicit 0..L-1.
        types = xwcl["token_type_ids"][b, :len(ref["input_ids"][b])].tolist()
        assert types == ref["token_type_ids"][b]
        first_sep = ref["input_ids"][b].index(tok.sep_token_id)
        assert set(types[:first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
        # Anchors are masked words: their first sub-token changed or kept, the rest of the target side untouched.
        anchors = xwcl["masked_words"][b, :len(ws)].numpy()
        assert anchors.sum() == max(1, round(0.15 * len(ws)))
    # SentA/StrucA input is the target alone.
    sent = tok(targets[0])["input_ids"]
    assert batch.inputs["sentence"]["input_ids"][0, :len(sent)].tolist() == sent
    # TLM masks both sides.
    labels = tlm["labels"]
    types = tlm["token_type_ids"]
    masked_types = types[labels != -100]
    assert (masked_types == 0).any() and (masked_types == 1).any()


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
    n = int(one["masked_pair"]["attention_mask"].sum())
    for name in ("masked_pair", "word_masked_pair"):
        assert torch.equal(full[name]["input_ids"][2, :n], one[name]["input_ids"][0, :n])
    other_seed = build(tok, words, targets, keys, specs, MaskingConfig(seed=1)).inputs
    assert not torch.equal(other_seed["masked_pair"]["labels"], full["masked_pair"]["labels"])


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
