"""Losses against values worked out independently: hand computations and naive per-element loops."""

from __future__ import annotations

import math

import pytest
import torch

from mmkd.losses import (projection_std, senta_loss, struca_loss, structure_loss, tlm_loss, variance_covariance,
                         xwcl_loss)


# ------------------------------------------------------------------ TLM
def test_tlm_hand_worked():
    # Two masked positions. Position (0,1): logits [0, ln 3] -> p(label 1) = 3/4.
    # Position (1,0): logits [ln 2, 0] -> p(label 0) = 2/3. Loss = -(ln 3/4 + ln 2/3) / 2.
    logits = torch.tensor([[[5.0, 1.0], [0.0, math.log(3)]],
                           [[math.log(2), 0.0], [7.0, -1.0]]])
    labels = torch.tensor([[-100, 1], [0, -100]])
    expected = -(math.log(3 / 4) + math.log(2 / 3)) / 2
    assert tlm_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_tlm_without_masked_tokens_is_zero_and_differentiable():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = tlm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


# ------------------------------------------------------------------ XWCL
def naive_xwcl(s, t, word_mask, masked, tau, cosine=False):
    """Eq. (1) one anchor at a time, with Python loops and math.exp."""
    terms = []
    B, W, _ = s.shape
    for b in range(B):
        for i in range(W):
            if not (masked[b, i] and word_mask[b, i]):
                continue
            def sim(u, v):
                if cosine:
                    u, v = u / u.norm(), v / v.norm()
                return float(sum(x * y for x, y in zip(u.tolist(), v.tolist())))
            num = math.exp(sim(s[b, i], t[b, i]) / tau)
            den = sum(math.exp(sim(s[b, i], t[b, j]) / tau) for j in range(W) if word_mask[b, j])
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def test_xwcl_hand_worked():
    # One sentence, 2 words, word 0 masked. s0·t0 = 1, s0·t1 = 0, tau = 1:
    # loss = -log(e / (e + 1)).
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    word_mask = torch.tensor([[True, True]])
    masked = torch.tensor([[True, False]])
    expected = -math.log(math.e / (math.e + 1))
    assert xwcl_loss(s, t, word_mask, masked, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # tau = 0.5 doubles the logits: -log(e^2 / (e^2 + 1)).
    assert xwcl_loss(s, t, word_mask, masked, 0.5).item() == pytest.approx(-math.log(math.e**2 / (math.e**2 + 1)), rel=1e-6)


@pytest.mark.parametrize("cosine", [False, True])
def test_xwcl_matches_a_naive_loop_with_padding(cosine):
    g = torch.Generator().manual_seed(0)
    B, W, H = 3, 6, 5
    s, t = torch.randn(B, W, H, generator=g), torch.randn(B, W, H, generator=g)
    lengths = [6, 3, 4]
    word_mask = torch.tensor([[j < n for j in range(W)] for n in lengths])
    masked = torch.tensor([[1, 0, 0, 1, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 0, 0, 1, 1]], dtype=torch.bool)
    # masked words beyond a sentence's length (b=2, j=4,5) are not anchors.
    t_padded = t.clone()
    t_padded[~word_mask] = 1e3   # padding must not leak into the denominator
    got = xwcl_loss(s, t_padded, word_mask, masked, 0.7, "cosine" if cosine else "dot")
    assert got.item() == pytest.approx(naive_xwcl(s, t, word_mask, masked, 0.7, cosine), rel=1e-5)


def test_xwcl_gradient_reaches_student_and_no_anchor_means_zero():
    s = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4)
    wm = torch.ones(1, 3, dtype=torch.bool)
    xwcl_loss(s, t, wm, torch.tensor([[False, True, False]]), 1.0).backward()
    assert s.grad[0, 1].abs().sum() > 0 and s.grad[0, 0].abs().sum() == 0
    assert xwcl_loss(s, t, wm, torch.zeros(1, 3, dtype=torch.bool), 1.0).item() == 0.0


# ------------------------------------------------------------------ SentA
def test_senta_hand_worked():
    # Row 0: (3,4)/5 vs (1,0): diff (-0.4, 0.8) -> 0.16 + 0.64 = 0.8.
    # Row 1: identical directions (2,0) vs (5,0): 0.  Mean = 0.4.
    s = torch.tensor([[3.0, 4.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [5.0, 0.0]])
    assert senta_loss(s, t).item() == pytest.approx(0.4, rel=1e-6)


def test_senta_equals_two_minus_two_cosine():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 16, generator=g), torch.randn(7, 16, generator=g)
    cos = [float(a @ b / (a.norm() * b.norm())) for a, b in zip(s, t)]
    assert senta_loss(s, t).item() == pytest.approx(sum(2 - 2 * c for c in cos) / 7, rel=1e-5)


def test_senta_centred_hand_worked():
    # Batch means: s (2, 2), t (1, 1). Centred: s (1, 2), (-1, -2); t (0, -1), (0, 1).
    # Both rows: cos = -2/sqrt(5), so ||s̄ - t̄||² = 2 + 4/sqrt(5); the mean is the same.
    s = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 2.0]])
    assert senta_loss(s, t, center=True).item() == pytest.approx(2 + 4 / math.sqrt(5), rel=1e-6)
    assert senta_loss(s, t).item() == pytest.approx(
        ((3 / 5 - 1) ** 2 + (4 / 5) ** 2 + (1 - 1 / math.sqrt(5)) ** 2 + (2 / math.sqrt(5)) ** 2) / 2, rel=1e-6)


def test_senta_centred_gives_a_constant_student_nothing():
    # Targets bunched around one direction (as frozen random projections of [CLS] are): the plain
    # loss rewards predicting that direction for every input; the centred loss does not.
    g = torch.Generator().manual_seed(0)
    t = torch.tensor([10.0] + [0.0] * 7) + torch.randn(16, 8, generator=g)
    constant = torch.tensor([[1.0] + [0.0] * 7]).expand(16, 8)
    assert senta_loss(constant, t).item() < 0.1
    assert senta_loss(constant, t, center=True).item() == pytest.approx(1.0, abs=1e-6)
    assert senta_loss(t * 3, t, center=True).item() == pytest.approx(0.0, abs=1e-6)


# ------------------------------------------------------------------ StrucA
def naive_struca(s, t, tau, exclude_diagonal=False):
    def norm(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]
    zs, zt = [norm(r) for r in s.tolist()], [norm(r) for r in t.tolist()]
    B = len(zs)
    total = 0.0
    for i in range(B):
        others = [j for j in range(B) if not (exclude_diagonal and j == i)]
        a = [sum(x * y for x, y in zip(zt[i], zt[j])) / tau for j in others]
        b = [sum(x * y for x, y in zip(zs[i], zs[j])) / tau for j in others]
        pa = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        qb = [math.exp(x) / sum(math.exp(y) for y in b) for x in b]
        total += sum(p * math.log(p / q) for p, q in zip(pa, qb))
    return total / B


def test_struca_hand_worked():
    # Teacher: two orthogonal vectors, A = I. Student: identical vectors, Ã = all ones.
    # tau = 1: teacher row = (e, 1)/(e+1), student row = (1/2, 1/2).
    # KL per row = p ln(2p) + (1-p) ln(2(1-p)), p = e/(e+1); both rows equal.
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    s = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    p = math.e / (math.e + 1)
    expected = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert struca_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_struca_matches_a_naive_loop(tau):
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    assert struca_loss(s, t, tau).item() == pytest.approx(naive_struca(s, t, tau), rel=1e-4)


@pytest.mark.parametrize("tau", [1.0, 0.1])
def test_struca_without_the_diagonal_matches_a_naive_loop(tau):
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    got = struca_loss(s, t, tau, exclude_diagonal=True).item()
    assert got == pytest.approx(naive_struca(s, t, tau, exclude_diagonal=True), rel=1e-4)
    assert got != pytest.approx(struca_loss(s, t, tau).item(), rel=1e-3)


def test_struca_without_the_diagonal_by_hand():
    # Three sentences; teacher rows over the other two. Teacher: z0 = z1 (cos 1), z2 orthogonal to both.
    # Row 0 over (1, 2): softmax(1, 0) = (e, 1)/(e+1). Student: all three orthogonal, every row (1/2, 1/2).
    # Rows 0 and 1: KL = p ln 2p + (1-p) ln 2(1-p) with p = e/(e+1); row 2 over (0, 1): both 0, KL 0.
    t = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    s = torch.eye(3)
    p = math.e / (math.e + 1)
    row = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert struca_loss(s, t, 1.0, exclude_diagonal=True).item() == pytest.approx(2 * row / 3, rel=1e-6)
    assert struca_loss(s[:1], t[:1], 1.0, exclude_diagonal=True).item() == 0.0


def test_target_diagonal_mass_by_hand():
    from mmkd.losses import target_diagonal_mass

    # Two orthogonal rows at τ = 1: each row softmax(1, 0), diagonal e/(e+1); four identical rows: 1/4.
    assert target_diagonal_mass(torch.eye(2), 1.0).item() == pytest.approx(math.e / (math.e + 1))
    assert target_diagonal_mass(torch.ones(4, 3), 0.1).item() == pytest.approx(0.25)


def test_struca_is_zero_for_same_structure_and_teacher_gets_gradient():
    t = torch.randn(5, 4, requires_grad=True)
    assert struca_loss(t.detach() * 3.0, t.detach(), 0.2).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(5, 4, requires_grad=True)
    struca_loss(s, t, 0.2).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0


def test_projection_std_detects_collapse():
    assert projection_std(torch.ones(8, 4)).item() == 0.0
    spread = torch.eye(4).repeat(2, 1)   # 8 vectors, each one-hot
    # each dimension holds two 1s and six 0s: std (unbiased) = sqrt(2*6/(8*7)) per dimension
    assert projection_std(spread).item() == pytest.approx(math.sqrt(12 / 56), rel=1e-6)


# ------------------------------------------------------------------ the teacher heads' own losses (eqs. 7, 8)
def test_structure_loss_is_struca_against_the_centred_teacher_cls():
    g = torch.Generator().manual_seed(5)
    proj, cls = torch.randn(6, 4, generator=g), torch.randn(6, 10, generator=g) + 5.0   # far from the origin
    centred = [[x - sum(col) / 6 for x, col in zip(row, zip(*cls.tolist()))] for row in cls.tolist()]
    expected = naive_struca(proj, torch.tensor(centred), 0.5)
    assert structure_loss(proj, cls, 0.5).item() == pytest.approx(expected, rel=1e-4)


def test_structure_loss_a_constant_projection_pays_and_the_structure_itself_is_free():
    # Teacher [CLS]: 4 vectors around a common offset; centred, they are ±e1, ±e2.
    cls = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]]) + torch.tensor([7.0, 3.0])
    tau = 1.0
    # A constant projection: every student row uniform (1/4). Teacher row of +e1: cosines (1, -1, 0, 0).
    row = torch.tensor([1.0, -1.0, 0.0, 0.0])
    p = torch.softmax(row / tau, 0)
    kl_row = float((p * (p / 0.25).log()).sum())         # every row is a permutation of this one
    constant = torch.ones(4, 3)
    assert structure_loss(constant, cls, tau).item() == pytest.approx(kl_row, rel=1e-6)
    assert kl_row > 0.1
    # The centred [CLS] themselves (scaled: only directions count) lose nothing.
    centred = cls - cls.mean(0)
    assert structure_loss(centred * 2.5, cls, tau).item() == pytest.approx(0.0, abs=1e-6)


def naive_variance_covariance(z, gamma=1.0, cov_weight=0.04, eps=1e-4):
    rows = [[x / math.sqrt(sum(v * v for v in r)) * math.sqrt(len(r)) for x in r] for r in z.tolist()]
    B, D = len(rows), len(rows[0])
    mean = [sum(r[d] for r in rows) / B for d in range(D)]
    var = [sum((r[d] - mean[d]) ** 2 for r in rows) / (B - 1) for d in range(D)]
    variance = sum(max(0.0, gamma - math.sqrt(v + eps)) for v in var) / D
    off = 0.0
    for d in range(D):
        for e in range(D):
            if d != e:
                c = sum((r[d] - mean[d]) * (r[e] - mean[e]) for r in rows) / (B - 1)
                off += c * c
    return variance + cov_weight * off / D


def test_variance_covariance_matches_a_naive_loop():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 5, generator=g)
    assert variance_covariance(z).item() == pytest.approx(naive_variance_covariance(z), rel=1e-5)


def test_variance_covariance_hand_worked():
    # A constant: no variance at all, no covariance: γ − √ε.
    assert variance_covariance(torch.ones(6, 4) * 3.0).item() == pytest.approx(1.0 - 0.01, rel=1e-6)
    # ±e1, ±e2 (D = 2): u = √2·z, Var(u_1) = Var(u_2) = 2·2/3 = 4/3 (unbiased, B = 4); no covariance.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    assert variance_covariance(z).item() == pytest.approx(0.0, abs=1e-7)
    # Only ±e1 (a line): u_1 = ±√2, Var = 8/3 > 1, free; u_2 = 0, pays γ − √ε; mean over the 2 dims.
    line = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert variance_covariance(line).item() == pytest.approx(0.99 / 2, rel=1e-6)
    # Correlated dimensions pay the covariance term: (1,1), (-1,-1), (1,1), (-1,-1) normalised.
    diag = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [-1.0, -1.0]])
    # u = ±(1, 1): Var = 4/3 per dim (free), Cov = 4/3 off the diagonal, twice: 0.04 · 2·(16/9) / 2.
    assert variance_covariance(diag).item() == pytest.approx(0.04 * 2 * 16 / 9 / 2, rel=1e-6)
