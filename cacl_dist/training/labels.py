"""The pseudo labels of the current epoch and the exact cluster centres of both banks under them (and, when the
camera-proxy loss is on, the centres of every (cluster, camera) pair)."""

from __future__ import annotations

import torch

from cacl_dist.memory import ClusterCentres
from cacl_dist.training.banks import MemoryBanks, exact_centres, saved_centres
from cacl_dist.training.proxies import CameraProxies


class PseudoLabels:
    """One label per training image (-1 for outliers), the centres of each bank, and the clustering's figures."""

    def __init__(self, device: torch.device | str, proxies: CameraProxies | None = None) -> None:
        self.device = device
        self.proxies = proxies  # None: camera-aware proxies off, nothing computed or saved
        self.labels: torch.Tensor | None = None  # (N,) int64 on the device
        self.centres_rgb: ClusterCentres | None = None
        self.centres_gray: ClusterCentres | None = None
        self.cluster_stats: dict = {}

    def assign(self, labels: torch.Tensor, banks: MemoryBanks) -> None:
        """Use `labels` from now on, with exact centres: each rank's per-cluster sums of its own rows, all-reduced."""
        self.labels = labels.to(self.device)
        num_clusters = int(self.labels.max().item()) + 1
        self.centres_rgb = exact_centres(banks.rgb, self.labels, num_clusters)
        self.centres_gray = exact_centres(banks.gray, self.labels, num_clusters)
        if self.proxies is not None:
            self.proxies.assign(self.labels)

    def state_dict(self) -> dict:
        state = {"labels": None if self.labels is None else self.labels.cpu(),
                 "centres_rgb": None if self.centres_rgb is None else self.centres_rgb.state_dict(),
                 "centres_gray": None if self.centres_gray is None else self.centres_gray.state_dict(),
                 "cluster_stats": self.cluster_stats}
        return state if self.proxies is None else {**state, **self.proxies.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore labels and centres onto this run's device."""
        self.labels = None if state["labels"] is None else state["labels"].to(self.device)
        self.centres_rgb = self._centres(state["centres_rgb"])
        self.centres_gray = self._centres(state["centres_gray"])
        self.cluster_stats = state["cluster_stats"]
        if self.proxies is not None:  # after the banks: a checkpoint without proxies rebuilds them from those
            self.proxies.load_state_dict(state, self.labels)

    def _centres(self, saved: dict | None) -> ClusterCentres | None:
        return None if saved is None else saved_centres(saved, self.device)


__all__ = ["PseudoLabels"]
