"""Camera-aware proxies of a run: the centres of every (pseudo cluster, camera) pair in both banks.

Built where the cluster centres are built (each rank sums its own bank rows per proxy in float64,
one all-reduce), kept equal to the bank means by the same row deltas as the centres, and saved
with the pseudo labels. Only a run with ``loss.camera_proxy_weight > 0`` has them.
"""

from __future__ import annotations

import torch

from cacl_dist.camera_proxies import ProxyLayout, camera_proxy_loss, camera_sample_weights, proxy_layout
from cacl_dist.errors import UserError
from cacl_dist.memory import ClusterCentres
from cacl_dist.training.banks import MemoryBanks, exact_centres, saved_centres

PARTS = ("camera_intra_rgb", "camera_inter_rgb", "camera_intra_gray", "camera_inter_gray")
"""The losses a step reports with the proxies on (unweighted, as the CACL parts)."""


class CameraProxies:
    """The proxy layout of the current labels and the proxy sums of the RGB and grey banks."""

    def __init__(self, loss_cfg, cameras_N: list[int], banks: MemoryBanks, device: torch.device | str,
                 dataset_name: str = "the dataset") -> None:
        if not cameras_N or min(cameras_N) < 0:
            raise UserError(f"config key 'loss.camera_proxy_weight': camera-aware proxies need the camera of every "
                            f"training image, but {dataset_name} has images of unknown camera; set it to 0")
        self.cfg, self.banks, self.device = loss_cfg, banks, device
        self.cameras_N = torch.as_tensor(cameras_N, dtype=torch.int64, device=device)
        self.layout: ProxyLayout | None = None
        self.rgb: ClusterCentres | None = None
        self.gray: ClusterCentres | None = None

    def assign(self, labels_N: torch.Tensor) -> None:
        """The proxies of new labels, from this rank's rows of both banks summed over all ranks."""
        self.layout = proxy_layout(labels_N, self.cameras_N)
        self.rgb = exact_centres(self.banks.rgb, self.layout.proxy_of_N, self.layout.num_proxies)
        self.gray = exact_centres(self.banks.gray, self.layout.proxy_of_N, self.layout.num_proxies)

    def apply_delta(self, indices_G: torch.Tensor, delta_rgb: torch.Tensor, delta_gray: torch.Tensor,
                    validate: bool) -> None:
        """Follow the banks: the global batch's row deltas (already shared by every rank) into the proxy sums."""
        proxies_G = self.layout.proxy_of_N[indices_G]
        self.rgb.apply_delta(proxies_G, delta_rgb, validate=validate)
        self.gray.apply_delta(proxies_G, delta_gray, validate=validate)

    def losses(self, x: torch.Tensor, x_gray: torch.Tensor, labels_B: torch.Tensor, indices_G: torch.Tensor,
               local_columns: slice, epoch: int, intra_gray_weight: float) -> tuple[torch.Tensor, dict]:
        """The weighted camera-proxy term of this rank's samples and its four unweighted parts.

        ``indices_G``: the global batch's dataset indices (on the device); ``epoch``: epochs done.
        """
        cfg = self.cfg
        cameras_G = self.cameras_N[indices_G]
        weights_B = camera_sample_weights(cameras_G, local_columns)
        local = indices_G[local_columns]
        proxy_B, cameras_B = self.layout.proxy_of_N[local], cameras_G[local_columns]
        with_inter = epoch >= cfg.camera_proxy_inter_from_epoch
        common = dict(layout=self.layout, labels_B=labels_B, proxy_B=proxy_B, cameras_B=cameras_B,
                      weights_B=weights_B, tau=cfg.camera_proxy_temperature,
                      hard_negatives=cfg.camera_proxy_hard_negatives, with_inter=with_inter)
        rgb = camera_proxy_loss(x, self.rgb.centres(), **common)
        gray = camera_proxy_loss(x_gray, self.gray.centres(), **common)
        inter_w = cfg.camera_proxy_inter_weight
        total = cfg.camera_proxy_weight * (rgb.intra + inter_w * rgb.inter
                                           + intra_gray_weight * (gray.intra + inter_w * gray.inter))
        parts = dict(zip(PARTS, (rgb.intra, rgb.inter, gray.intra, gray.inter)))
        return total, parts

    def state_dict(self) -> dict:
        if self.layout is None:
            return {"camera_proxies": None}
        return {"camera_proxies": {"proxy_of": self.layout.proxy_of_N.cpu(), "cluster": self.layout.cluster_P.cpu(),
                                   "camera": self.layout.camera_P.cpu(), "rgb": self.rgb.state_dict(),
                                   "gray": self.gray.state_dict()}}

    def load_state_dict(self, state: dict, labels_N: torch.Tensor | None) -> None:
        """Restore saved proxies; a checkpoint without them (a run that had them off) rebuilds them from the banks."""
        saved = state.get("camera_proxies")
        if saved is None:
            if labels_N is not None:
                self.assign(labels_N)
            return
        self.layout = ProxyLayout(saved["proxy_of"].to(self.device), saved["cluster"].to(self.device),
                                  saved["camera"].to(self.device))
        self.rgb, self.gray = saved_centres(saved["rgb"], self.device), saved_centres(saved["gray"], self.device)


__all__ = ["PARTS", "CameraProxies"]
