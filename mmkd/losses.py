"""The four MMKD objectives as pure functions of tensors (paper section 3).

No model code here: the trainer computes the tensors, these functions compute the numbers, and the
tests check them against naive loops and hand-worked values. All arithmetic is done in float32
whatever the input dtype (bf16 autocast upstream), since softmax/log-softmax over the vocabulary
or over a batch is where low precision hurts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def tlm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Translation language modelling (section 3.1): masked-LM cross-entropy.

    logits: [B, L, V]; labels: [B, L], the original token id at masked positions and -100
    elsewhere. Mean over the masked tokens of the batch; 0 (with a graph) when none is masked.
    """
    flat = labels.reshape(-1)
    if not (flat != -100).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), flat, ignore_index=-100)


def xwcl_loss(student_words: Tensor, teacher_words: Tensor, word_mask: Tensor, masked: Tensor,
              temperature: float, similarity: str = "dot") -> Tensor:
    """Cross-lingual word-aware contrastive learning, eq. (1).

    student_words: [B, W, H] student states at the first sub-token of each English word of its
    `[CLS] s' [SEP] t [SEP]` input; teacher_words: [B, W, H] teacher states of the unmasked s;
    word_mask: [B, W] bool, True where word j exists; masked: [B, W] bool, True for the words that
    were masked (the anchors). For anchor i of sentence b the logits are
    sim(student_i, teacher_j) / temperature over the existing words j of the same sentence, the
    positive is j = i, and the loss is -log softmax at i. Mean over all anchors in the batch.
    `similarity`: "dot" (the paper) or "cosine".
    """
    anchors = masked & word_mask
    if not anchors.any():
        return (student_words.sum() + teacher_words.sum()) * 0.0
    s, t = student_words.float(), teacher_words.float()
    if similarity == "cosine":
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    elif similarity != "dot":
        raise ValueError(f"similarity must be 'dot' or 'cosine', not {similarity!r}")
    logits = torch.einsum("bih,bjh->bij", s, t) / temperature          # [B, W, W]
    logits = logits.masked_fill(~word_mask[:, None, :], float("-inf"))  # only words of the sentence
    log_prob = torch.log_softmax(logits, dim=-1).diagonal(dim1=1, dim2=2)   # [B, W]: log p(j=i | i)
    return -log_prob[anchors].mean()


def senta_loss(student_pred: Tensor, teacher_proj: Tensor, center: bool = False) -> Tensor:
    """Sentence alignment, eq. (2): mean over the batch of ||q̄(g(c̃)) − ḡ_t(c)||²,
    both L2-normalised. student_pred, teacher_proj: [B, D].

    center=True (not in the paper; docs/method.md): subtract each side's batch mean before
    normalising, so only what tells the sentences of the batch apart is matched and a student
    that outputs one vector for every input cannot lower the loss."""
    student_pred, teacher_proj = student_pred.float(), teacher_proj.float()
    if center:
        student_pred = student_pred - student_pred.mean(dim=0, keepdim=True)
        teacher_proj = teacher_proj - teacher_proj.mean(dim=0, keepdim=True)
    s = F.normalize(student_pred, dim=-1)
    t = F.normalize(teacher_proj, dim=-1)
    return (s - t).pow(2).sum(dim=-1).mean()


def struca_loss(student_pred: Tensor, teacher_proj: Tensor, temperature: float,
                exclude_diagonal: bool = False) -> Tensor:
    """Structure alignment, eqs. (3)–(5).

    Normalise both [B, D] inputs; A = z zᵀ (teacher), Ã = z̃ z̃ᵀ (student); teacher rows
    softmax(A/τ), student rows log_softmax(Ã/τ); KL(teacher ‖ student) summed over each row and
    averaged over the B rows.

    exclude_diagonal=True (not in the paper; docs/method.md): each row's softmax runs over the other
    sentences j ≠ i only. A_ii = 1 for every row, so at a small τ the diagonal takes nearly all of a
    teacher row's mass and the target says little about how sentence i relates to the others.
    """
    z = F.normalize(teacher_proj.float(), dim=-1)
    zs = F.normalize(student_pred.float(), dim=-1)
    a, a_student = z @ z.T / temperature, zs @ zs.T / temperature
    if not exclude_diagonal:
        log_p = torch.log_softmax(a, dim=-1)
        log_q = torch.log_softmax(a_student, dim=-1)
        return (log_p.exp() * (log_p - log_q)).sum(dim=-1).mean()
    n = a.shape[0]
    if n < 2:
        return (zs.sum() + z.sum()) * 0.0
    off = ~torch.eye(n, dtype=torch.bool, device=a.device)
    log_p = torch.log_softmax(a.masked_fill(~off, float("-inf")), dim=-1)
    log_q = torch.log_softmax(a_student.masked_fill(~off, float("-inf")), dim=-1)
    terms = torch.where(off, log_p.exp() * (log_p - log_q), torch.zeros_like(log_p))
    return terms.sum(dim=-1).mean()


def target_diagonal_mass(teacher_proj: Tensor, temperature: float) -> Tensor:
    """How much of StrucA's teacher target sits on the diagonal: the mean over rows of
    softmax(A/τ)_ii, A = z zᵀ on L2-normalised rows. 1/B for a target that treats every sentence
    alike, near 1 for one that is nearly the identity (then StrucA only pushes predictions apart)."""
    z = F.normalize(teacher_proj.detach().float(), dim=-1)
    return torch.softmax(z @ z.T / temperature, dim=-1).diagonal().mean()


def structure_loss(proj: Tensor, teacher_cls: Tensor, temperature: float) -> Tensor:
    """The teacher heads' own loss in mode `structure`, mmkd's addition (docs/method.md, L_structure): the similarity
    structure of the batch's teacher [CLS] vectors, centred by the batch mean, kept by their
    projections. With c̄_i = c_i − mean_b c_b, P = row-softmax(cos(c̄_i, c̄_j)/τ) and
    Q = row-softmax(cos(z_i, z_j)/τ) for z = ḡ_t(c): mean over rows of KL(P_i ‖ Q_i).
    A constant projection gives uniform rows Q, so it cannot lower the loss below what any spread
    projection reaches. It is StrucA's eq. (3)-(5) with the centred [CLS] as the teacher side."""
    cls = teacher_cls.float()
    return struca_loss(proj, cls - cls.mean(dim=0, keepdim=True), temperature)


def variance_covariance(proj: Tensor, gamma: float = 1.0, cov_weight: float = 0.04, eps: float = 1e-4) -> Tensor:
    """The guard of mode `guard`, mmkd's addition (docs/method.md, L_guard; VICReg's variance and covariance terms, at
    VICReg's 25:1 ratio) on what SentA/StrucA compare: the L2-normalised projections, scaled by √D so
    that well-spread vectors have unit variance per dimension. u = √D·z/‖z‖ over the batch:
    mean_d max(0, γ − sqrt(Var_b(u_d) + ε)) + cov_weight · Σ_{d≠e} Cov(u)²_de / D.
    A constant projection gives the variance term its maximum, γ − √ε."""
    z = F.normalize(proj.float(), dim=-1)
    d = z.shape[-1]
    u = z * d ** 0.5
    std = torch.sqrt(u.var(dim=0) + eps)
    variance = torch.relu(gamma - std).mean()
    centred = u - u.mean(dim=0, keepdim=True)
    cov = centred.T @ centred / max(1, u.shape[0] - 1)
    off = cov.pow(2).sum() - cov.diagonal().pow(2).sum()
    return variance + cov_weight * off / d


def projection_std(x: Tensor) -> Tensor:
    """Collapse indicator: mean over dimensions of the batch std of the L2-normalised vectors.
    About 1/sqrt(D) for well-spread vectors, 0 when every input maps to the same point."""
    return F.normalize(x.detach().float(), dim=-1).std(dim=0).mean()
