"""Pooling, BN neck and predictor heads of the CACL branches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Every name accepted by :func:`build_pool`.
POOL_NAMES: tuple[str, ...] = ("avg", "gem")

#: Initialisations of the predictor's Linear layer, see :class:`Predictor`.
PREDICTOR_INITS: tuple[str, ...] = ("default", "kaiming")


class GlobalAvgPool(nn.Module):
    """Global average pooling: ``B x C x H x W`` -> ``B x C`` (float32, also for half-precision maps)."""

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Average over the two spatial dimensions, accumulating and returning float32."""
        return feature_map.mean(dim=(-2, -1), dtype=torch.float32)


class GeneralizedMeanPool(nn.Module):
    """Generalised-mean (GeM) pooling: ``(mean(clamp(x, eps) ** p)) ** (1 / p)``, ``B x C``.

    Args:
        p: the exponent (3 by default); 1 is average pooling, large values approach max.
        learnable: train ``p`` as a parameter when True, keep it fixed (a buffer) otherwise.
        eps: lower clamp applied before the power, keeping the root differentiable.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6):
        super().__init__()
        if p <= 0:
            raise ValueError(f"GeM exponent p must be positive, got {p!r}")
        if eps <= 0:
            raise ValueError(f"GeM eps must be positive, got {eps!r}")
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        """Pool ``B x C x H x W`` to ``B x C``; computed in float32 so powers do not overflow fp16."""
        p = self.p.float()
        powered = feature_map.float().clamp(min=self.eps).pow(p)
        return powered.mean(dim=(-2, -1)).pow(1.0 / p)

    def extra_repr(self) -> str:
        return f"p={float(self.p):.3f}, learnable={isinstance(self.p, nn.Parameter)}, eps={self.eps}"


class TokenFeature(nn.Module):
    """The pooled feature of a ViT: its class token ``B x D``, passed on in float32 (nothing to pool)."""

    def forward(self, token_BD: torch.Tensor) -> torch.Tensor:
        """Return the token features as float32."""
        return token_BD.float()


def build_pool(name: str) -> nn.Module:
    """Return a global pooling module by name: ``"avg"`` or ``"gem"`` (learnable p = 3)."""
    if name == "avg":
        return GlobalAvgPool()
    if name == "gem":
        return GeneralizedMeanPool()
    raise ValueError(f"unknown pool {name!r}; choose one of {', '.join(POOL_NAMES)}")


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d over ``B x D`` features whose bias is fixed at zero (not trained)."""

    def __init__(self, dim: int):
        super().__init__(dim)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class Predictor(nn.Module):
    """Predictor G: ``Linear(D, D)`` -> BatchNorm1d (bias frozen) -> L2 normalisation.

    ``init``: ``"default"`` keeps PyTorch's ``nn.Linear`` initialisation; ``"kaiming"`` (the
    released code's) draws the weight from a Kaiming normal with fan-out and sets the bias to 0.
    """

    def __init__(self, dim: int, init: str = "default"):
        super().__init__()
        if init not in PREDICTOR_INITS:
            raise ValueError(f"unknown predictor init {init!r}; choose one of {', '.join(PREDICTOR_INITS)}")
        self.linear = nn.Linear(dim, dim)
        if init == "kaiming":
            nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")
            nn.init.zeros_(self.linear.bias)
        self.bn = BNNeck(dim)

    def forward(self, pooled_BD: torch.Tensor) -> torch.Tensor:
        """Map pooled features ``B x D`` to unit-norm predictions ``B x D``."""
        return F.normalize(self.bn(self.linear(pooled_BD)), dim=1)
