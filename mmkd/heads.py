"""Projector and predictor heads (paper 3.3–3.4, 4.1): randomly initialised 2-layer MLPs,
768 hidden units, 128 outputs. One factory for all six heads."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: int = 768, out: int = 128, norm: str = "none") -> nn.Sequential:
    """Linear -> [norm] -> ReLU -> Linear. `norm`: none (the paper's plain 2-layer MLP), batch
    (BYOL's projector) or layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden)]
    if norm == "batch":
        layers.append(nn.BatchNorm1d(hidden))
    elif norm == "layer":
        layers.append(nn.LayerNorm(hidden))
    elif norm != "none":
        raise ValueError(f"head norm must be none, batch or layer, not {norm!r}")
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden, out)]
    return nn.Sequential(*layers)
