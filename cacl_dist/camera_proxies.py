"""Camera-aware proxy losses as pure tensor functions (docs/method.md section 9).

The form is that of CAP (Wang et al., "Camera-aware Proxies for Unsupervised Person
Re-Identification", AAAI 2021): a proxy is the centre of the bank rows of one (pseudo cluster,
camera) pair; the intra-camera loss contrasts a feature with the proxies of its own camera, the
inter-camera loss pulls it towards every proxy of its cluster against the hardest negative
proxies of the other clusters. Both are summed per camera as means over that camera's samples of
the global batch, which :func:`camera_sample_weights` turns into per-sample weights so that the
sum over the ranks' shares equals the one-process value.

Nothing here talks to other processes; proxies are detached (they are bank means). Notation: B
batch, G global batch, D feature size, N dataset rows, P proxies.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ProxyLayout:
    """Which proxy each dataset row belongs to, and the cluster and camera of each proxy.

    ``proxy_of_N`` is -1 for outliers (label -1) and rows of unknown camera (-1). Proxies are
    numbered camera by camera, clusters ascending within a camera.
    """

    proxy_of_N: torch.Tensor  # (N,) int64
    cluster_P: torch.Tensor  # (P,) int64
    camera_P: torch.Tensor  # (P,) int64

    @property
    def num_proxies(self) -> int:
        return int(self.cluster_P.numel())


def proxy_layout(labels_N: torch.Tensor, cameras_N: torch.Tensor) -> ProxyLayout:
    """The proxies of the (cluster, camera) pairs present in the labelled rows (on the labels' device)."""
    if labels_N.dim() != 1 or cameras_N.shape != labels_N.shape:
        raise ValueError(f"labels and cameras must be two (N,) tensors, got {tuple(labels_N.shape)} and "
                         f"{tuple(cameras_N.shape)}")
    labels_N = labels_N.long()
    cameras_N = cameras_N.to(labels_N.device).long()
    keep_N = (labels_N >= 0) & (cameras_N >= 0)
    num_clusters = int(labels_N.max().item()) + 1 if labels_N.numel() else 0
    key_N = cameras_N * max(num_clusters, 1) + labels_N  # camera-major, so sorting orders by (camera, cluster)
    keys_P, inverse = torch.unique(key_N[keep_N], sorted=True, return_inverse=True)
    proxy_of_N = torch.full_like(labels_N, -1)
    proxy_of_N[keep_N] = inverse
    return ProxyLayout(proxy_of_N, keys_P % max(num_clusters, 1), keys_P // max(num_clusters, 1))


def camera_sample_weights(cameras_G: torch.Tensor, local_columns: slice) -> torch.Tensor:
    """Per-sample weights ``(b,)`` of this rank's columns: ``(G / b) / n_c``, ``n_c`` the global batch's count of the
    sample's camera.

    Summed over one process's batch, ``sum_i w_i l_i = sum_c mean_{i in c} l_i`` (CAP's per-camera sum); with
    W processes of ``b = G / W`` samples each the mean over ranks of the weighted local sums is the same value,
    and so is the gradient that data-parallel training averages. Cameras must be >= 0.
    """
    cameras_G = cameras_G.long()
    counts = torch.bincount(cameras_G)
    local = cameras_G[local_columns]
    scale = cameras_G.numel() / max(local.numel(), 1)
    return scale / counts[local].double()


def intra_camera_losses(feats_BD: torch.Tensor, proxies_PD: torch.Tensor, camera_P: torch.Tensor,
                        proxy_B: torch.Tensor, cameras_B: torch.Tensor, tau: float) -> torch.Tensor:
    """Per sample ``-log softmax_{p: camera_p = c_i}(<k_p, x_i> / tau)[own proxy]``, shape ``(B,)``."""
    logits_BP = feats_BD.float() @ proxies_PD.detach().float().to(feats_BD.device).t() / tau
    other_camera_BP = camera_P.to(feats_BD.device)[None, :] != cameras_B.to(feats_BD.device)[:, None]
    logits_BP = logits_BP.masked_fill(other_camera_BP, float("-inf"))
    return -F.log_softmax(logits_BP, dim=1).gather(1, proxy_B.to(feats_BD.device)[:, None]).squeeze(1)


def inter_camera_losses(feats_BD: torch.Tensor, proxies_PD: torch.Tensor, cluster_P: torch.Tensor,
                        labels_B: torch.Tensor, tau: float, hard_negatives: int) -> torch.Tensor:
    """Per sample ``-(1/|P_i|) sum_{p in P_i} log softmax_{P_i + N_i}(<k, x_i> / tau)[p]``, shape ``(B,)``.

    ``P_i``: every proxy of the sample's cluster (all cameras); ``N_i``: the ``hard_negatives`` proxies
    of other clusters most similar to ``x_i`` (fewer when there are fewer).
    """
    device = feats_BD.device
    logits_BP = feats_BD.float() @ proxies_PD.detach().float().to(device).t() / tau
    positive_BP = cluster_P.to(device)[None, :] == labels_B.to(device)[:, None]
    num_proxies = logits_BP.shape[1]
    keep_BP = positive_BP
    k = min(int(hard_negatives), num_proxies)
    if k > 0:
        negative_scores = logits_BP.detach().masked_fill(positive_BP, float("-inf"))
        top_vals, top_idx = negative_scores.topk(k, dim=1)
        hard_BP = torch.zeros_like(positive_BP).scatter(1, top_idx, torch.isfinite(top_vals))
        keep_BP = positive_BP | hard_BP
    log_prob_BP = F.log_softmax(logits_BP.masked_fill(~keep_BP, float("-inf")), dim=1)
    log_prob_BP = log_prob_BP.masked_fill(~positive_BP, 0.0)
    return -log_prob_BP.sum(dim=1) / positive_BP.sum(dim=1).clamp(min=1)


@dataclass
class CameraProxyParts:
    """The two camera-proxy losses of one branch (scalar tensors, per-camera sums of means)."""

    intra: torch.Tensor
    inter: torch.Tensor


def camera_proxy_loss(feats_BD: torch.Tensor, proxies_PD: torch.Tensor, layout: ProxyLayout, labels_B: torch.Tensor,
                      proxy_B: torch.Tensor, cameras_B: torch.Tensor, weights_B: torch.Tensor, tau: float = 0.07,
                      hard_negatives: int = 50, with_inter: bool = True) -> CameraProxyParts:
    """CAP's intra- and inter-camera losses of one branch's features against that branch's proxies.

    ``weights_B`` from :func:`camera_sample_weights`; ``with_inter=False`` (CAP's first epochs) leaves the
    inter-camera loss out of the graph and returns it as zero. Float32 outside autocast.
    """
    if tau <= 0:
        raise ValueError(f"camera proxy temperature must be positive, got {tau!r}")
    if proxies_PD.dim() != 2 or feats_BD.dim() != 2 or proxies_PD.shape[1] != feats_BD.shape[1]:
        raise ValueError(f"proxies must be P x D and features B x D with the same D, got {tuple(proxies_PD.shape)} "
                         f"and {tuple(feats_BD.shape)}")
    weights_B = weights_B.to(feats_BD.device, torch.float32)
    intra = (weights_B * intra_camera_losses(feats_BD, proxies_PD, layout.camera_P, proxy_B, cameras_B, tau)).sum()
    if not with_inter:
        return CameraProxyParts(intra=intra, inter=torch.zeros((), device=feats_BD.device))
    inter_B = inter_camera_losses(feats_BD, proxies_PD, layout.cluster_P, labels_B, tau, hard_negatives)
    return CameraProxyParts(intra=intra, inter=(weights_B * inter_B).sum())


__all__ = ["CameraProxyParts", "ProxyLayout", "camera_proxy_loss", "camera_sample_weights", "inter_camera_losses",
           "intra_camera_losses", "proxy_layout"]
