"""Batch-level losses across processes (StrucA, centred SentA): the all-gathered loss on 2 gloo
processes, weighted as the trainer weights it and averaged by DDP, gives the gradient of the
single-process full-batch loss."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmkd.losses import senta_loss, struca_loss

LOSSES = {"struca": lambda s, t: struca_loss(s, t, 0.2), "senta_centred": lambda s, t: senta_loss(s, t, center=True)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _full_batch():
    g = torch.Generator().manual_seed(0)
    student_in, teacher_in = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    w_s, w_t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    return student_in, teacher_in, w_s, w_t


def _worker(rank: int, world: int, port: int, out: dict, name: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from mmkd.dist import gather_with_grad

    class _Acc:
        num_processes = world

    student_in, teacher_in, w_s, w_t = _full_batch()
    w_s, w_t = w_s.clone().requires_grad_(), w_t.clone().requires_grad_()
    half = slice(rank * 4, rank * 4 + 4)
    z_s = gather_with_grad(student_in[half] @ w_s, _Acc())
    z_t = gather_with_grad(teacher_in[half] @ w_t, _Acc())
    loss = LOSSES[name](z_s, z_t)
    loss.backward()
    for w in (w_s, w_t):            # what DDP does: average the gradients over processes
        dist.all_reduce(w.grad)
        w.grad /= world
    out[rank] = (loss.item(), w_s.grad.clone(), w_t.grad.clone())
    dist.destroy_process_group()


@pytest.mark.parametrize("name", list(LOSSES))
def test_batch_losses_gathered_over_two_processes_equal_one_process(name):
    student_in, teacher_in, w_s, w_t = _full_batch()
    w_s.requires_grad_()
    w_t.requires_grad_()
    ref = LOSSES[name](student_in @ w_s, teacher_in @ w_t)
    ref.backward()
    assert ref.item() > 0.05   # a real structure difference, not a degenerate zero
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, _free_port(), out, name), nprocs=2, join=True)
        results = dict(out)
    for rank in (0, 1):
        loss, g_s, g_t = results[rank]
        assert abs(loss - ref.item()) < 1e-6
        assert torch.allclose(g_s, w_s.grad, atol=1e-6)
        assert torch.allclose(g_t, w_t.grad, atol=1e-6)
