"""CACL losses as pure tensor functions (docs/method.md section 5).

Every loss is computed per sample and averaged over the batch given. Stop-gradients are
applied here (``detach``): the gray features in the instance loss, and every cluster centre.
Computations run in float32 even for half-precision inputs; call them outside autocast.

Input validation that would read device tensors back to the host (label ranges, empty
clusters) runs by default and is skipped with ``validate=False``, which the trainer passes
once it has checked the epoch's labels, so a training step never waits for the device.

Notation: B batch, D feature size, M clusters; ``x`` branch-1 feature, ``z`` predictor
output, ``x_gray`` branch-2 feature (x~ in the paper), ``centres`` bank means u (u~).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _check_labels(labels_B: torch.Tensor, num_clusters: int, num_samples: int, check_range: bool = True) -> None:
    """Raise ValueError unless ``labels_B`` holds ``num_samples`` integer ids in ``[0, num_clusters)``.

    The range check reads the labels back to the host; ``check_range=False`` skips it (shape and
    dtype are still checked, which costs nothing).
    """
    if labels_B.dim() != 1 or labels_B.numel() != num_samples:
        raise ValueError(
            f"labels_B must be a 1-D tensor with one label per sample ({num_samples}), "
            f"got shape {tuple(labels_B.shape)}"
        )
    if labels_B.dtype.is_floating_point or labels_B.dtype == torch.bool:
        raise ValueError(f"labels_B must be an integer tensor, got dtype {labels_B.dtype}")
    if num_samples == 0:
        raise ValueError("the batch is empty; losses need at least one sample")
    if not check_range:
        return
    low, high = int(labels_B.min()), int(labels_B.max())
    if low < 0 or high >= num_clusters:
        raise ValueError(
            f"labels_B must lie in [0, {num_clusters}) (one row per cluster centre), got range "
            f"[{low}, {high}]; drop unlabelled (-1) samples from the batch or rebuild the centres"
        )


def _check_pair(name_a: str, a_BD: torch.Tensor, name_b: str, b_BD: torch.Tensor) -> None:
    """Raise ValueError unless two feature tensors are ``B x D`` with the same shape."""
    if a_BD.dim() != 2 or a_BD.shape != b_BD.shape:
        raise ValueError(
            f"{name_a} and {name_b} must both be B x D with the same shape, got "
            f"{tuple(a_BD.shape)} and {tuple(b_BD.shape)}"
        )


def _check_centres(feats_BD: torch.Tensor, centres_MD: torch.Tensor) -> None:
    """Raise ValueError unless ``centres_MD`` is ``M x D`` with the features' D."""
    if feats_BD.dim() != 2 or centres_MD.dim() != 2 or centres_MD.shape[1] != feats_BD.shape[1]:
        raise ValueError(
            f"centres must be M x D and features B x D with the same D, got centres "
            f"{tuple(centres_MD.shape)} and features {tuple(feats_BD.shape)}"
        )


def instance_loss(z_BD: torch.Tensor, x_gray_BD: torch.Tensor) -> torch.Tensor:
    """L_I = mean_i -cos(z_i, sg(x~_i))."""
    _check_pair("z_BD", z_BD, "x_gray_BD", x_gray_BD)
    cos_B = F.cosine_similarity(z_BD.float(), x_gray_BD.detach().float(), dim=1)
    return -cos_B.mean()


def inter_view_loss(z_BD: torch.Tensor, centres_gray_MD: torch.Tensor, labels_B: torch.Tensor,
                    validate: bool = True) -> torch.Tensor:
    """L_inter = mean_i -cos(z_i, sg(u~_{w_i})), w_i the cluster of sample i."""
    _check_centres(z_BD, centres_gray_MD)
    _check_labels(labels_B, centres_gray_MD.shape[0], z_BD.shape[0], check_range=validate)
    targets_BD = centres_gray_MD.detach().float()[labels_B.to(centres_gray_MD.device)]
    cos_B = F.cosine_similarity(z_BD.float(), targets_BD.to(z_BD.device), dim=1)
    return -cos_B.mean()


def intra_view_loss(
    feats_BD: torch.Tensor,
    centres_MD: torch.Tensor,
    labels_B: torch.Tensor,
    tau: float = 0.05,
    gamma: float = 2.0,
    valid_M: torch.Tensor | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Focal cluster loss: mean_i -(1 - q_i)^gamma ln q_i, q_i = softmax_l(<u_l, x_i>/tau)[w_i].

    Centres are detached. Clusters with ``valid_M`` False (empty) are left out of the
    softmax; a sample whose own cluster is invalid is a ValueError. ``gamma = 0`` is plain
    cross-entropy over the centre similarities.
    """
    if tau <= 0:
        raise ValueError(f"temperature tau must be positive, got {tau!r}")
    if gamma < 0:
        raise ValueError(f"focal gamma must be >= 0, got {gamma!r}")
    _check_centres(feats_BD, centres_MD)
    num_clusters = centres_MD.shape[0]
    _check_labels(labels_B, num_clusters, feats_BD.shape[0], check_range=validate)
    labels_B = labels_B.to(feats_BD.device)
    logits_BM = feats_BD.float() @ centres_MD.detach().float().to(feats_BD.device).t() / tau
    if valid_M is not None:
        if valid_M.shape != (num_clusters,) or valid_M.dtype != torch.bool:
            raise ValueError(
                f"valid_M must be a bool tensor of shape ({num_clusters},), got "
                f"{valid_M.dtype} {tuple(valid_M.shape)}"
            )
        valid_M = valid_M.to(feats_BD.device)
        if validate and not bool(valid_M[labels_B].all()):
            bad = labels_B[~valid_M[labels_B]].unique()[:5].tolist()
            raise ValueError(f"samples are labelled with empty clusters {bad}; their centres are undefined")
        logits_BM = logits_BM.masked_fill(~valid_M, float("-inf"))
    log_q_B = F.log_softmax(logits_BM, dim=1).gather(1, labels_B[:, None]).squeeze(1)
    if gamma == 0:
        return -log_q_B.mean()
    focal_B = (1.0 - log_q_B.exp()).clamp(min=0.0).pow(gamma)
    return -(focal_B * log_q_B).mean()


@dataclass
class LossParts:
    """The CACL loss and its parts (scalar tensors); ``total`` is the one to backpropagate."""

    total: torch.Tensor
    instance: torch.Tensor
    inter: torch.Tensor
    intra_rgb: torch.Tensor
    intra_gray: torch.Tensor


def loss_weights(loss_cfg) -> dict[str, float]:
    """The ``*_weight`` keyword arguments of :func:`cacl_loss` read from a ``loss`` config section."""
    return {name: float(getattr(loss_cfg, name)) for name in ("instance_weight", "inter_weight", "intra_gray_weight")}


def cacl_loss(
    x_BD: torch.Tensor,
    z_BD: torch.Tensor,
    x_gray_BD: torch.Tensor,
    labels_B: torch.Tensor,
    centres_MD: torch.Tensor,
    centres_gray_MD: torch.Tensor,
    tau: float = 0.05,
    gamma: float = 2.0,
    valid_M: torch.Tensor | None = None,
    validate: bool = True,
    instance_weight: float = 1.0,
    inter_weight: float = 1.0,
    intra_gray_weight: float = 1.0,
) -> LossParts:
    """L = L_I + L_inter + intra(x, u) + intra(x~, u~) on one batch.

    The three ``*_weight`` factors scale L_I, L_inter and intra(x~, u~) for ablations (CACL is
    all ones); the parts are returned unweighted. A zero weight keeps the term in the graph with
    a zero gradient, so every parameter still takes part in the backward pass.

    Branch 2 (``x_gray_BD``) receives gradient only through ``intra_gray``; ``centres_MD``
    and ``centres_gray_MD`` are the banks' means and are never differentiated. ``validate=False``
    skips the checks that synchronise with the device (see the module docstring).
    """
    _check_pair("x_BD", x_BD, "z_BD", z_BD)
    _check_pair("x_BD", x_BD, "x_gray_BD", x_gray_BD)
    if centres_MD.shape != centres_gray_MD.shape:
        raise ValueError(
            f"centres_MD and centres_gray_MD must have the same shape, got "
            f"{tuple(centres_MD.shape)} and {tuple(centres_gray_MD.shape)}"
        )
    instance = instance_loss(z_BD, x_gray_BD)
    inter = inter_view_loss(z_BD, centres_gray_MD, labels_B, validate=validate)
    intra_rgb = intra_view_loss(x_BD, centres_MD, labels_B, tau=tau, gamma=gamma, valid_M=valid_M, validate=validate)
    intra_gray = intra_view_loss(x_gray_BD, centres_gray_MD, labels_B, tau=tau, gamma=gamma, valid_M=valid_M,
                                 validate=validate)
    total = instance_weight * instance + inter_weight * inter + intra_rgb + intra_gray_weight * intra_gray
    return LossParts(total=total, instance=instance, inter=inter, intra_rgb=intra_rgb, intra_gray=intra_gray)
