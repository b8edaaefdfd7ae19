"""Sharded instance memory banks and exact running cluster centres (docs/method.md section 3).

Each process owns a contiguous block of rows of the N x D bank. After every step the
caller gathers the global batch ``(indices, features)``; every rank updates the rows it
owns and returns the row changes (deltas), the caller sums the deltas over ranks, and every
rank adds them to float64 per-cluster sums. The centres (sums / counts) then equal the
mean of the current bank rows at every step without an all-reduce of the M x D centres.

The float64 sums add in a fixed order on every device (:func:`cacl_dist.ordered_add.index_add_`;
CUDA's atomic ``index_add_`` would not), so a run repeats bit for bit.

This module holds no communication code: the caller gathers and all-reduces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cacl_dist.ordered_add import index_add_

# Bank rows converted to float64 at a time when summing centres (128 MB of float64).
SUM_CHUNK_ENTRIES = 1 << 24


def _occurrence_B(indices_B: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same index (0 for the first)."""
    order_B = torch.sort(indices_B, stable=True).indices
    sorted_B = indices_B[order_B]
    positions_B = torch.arange(indices_B.numel(), device=indices_B.device)
    is_first_B = torch.ones_like(sorted_B, dtype=torch.bool)
    is_first_B[1:] = sorted_B[1:] != sorted_B[:-1]
    group_start_B = torch.cummax(torch.where(is_first_B, positions_B, torch.zeros_like(positions_B)), dim=0).values
    occurrence_B = torch.empty_like(positions_B)
    occurrence_B[order_B] = positions_B - group_start_B
    return occurrence_B


class InstanceBank:
    """Rows ``[start, end)`` of an ``N x D`` bank of L2-normalised features.

    Attributes:
        rows: the owned rows, ``(end - start) x D``.
    """

    def __init__(self, num_total: int, dim: int, start: int, end: int, device="cpu", dtype=torch.float32):
        if not 0 <= start <= end <= num_total:
            raise ValueError(f"shard [{start}, {end}) must lie within [0, {num_total}]; use shard_bounds()")
        if dim < 1:
            raise ValueError(f"feature dim must be >= 1, got {dim!r}")
        self.num_total = num_total
        self.dim = dim
        self.start = start
        self.end = end
        # One scratch row after the owned ones: the sync-free update parks its unselected writes there.
        self._storage = torch.zeros(end - start + 1, dim, device=device, dtype=dtype)
        self.rows = self._storage[: end - start]

    @property
    def num_rows(self) -> int:
        """Number of rows this shard owns."""
        return self.end - self.start

    def load(self, feats_shard: torch.Tensor, normalize: bool = True) -> None:
        """Set the owned rows from ``(end - start) x D`` features, L2-normalising each row.

        ``normalize=False`` copies rows that are already bank rows (e.g. from a checkpoint)
        bit for bit; normalising them again would move them by rounding.
        """
        if tuple(feats_shard.shape) != (self.num_rows, self.dim):
            raise ValueError(
                f"bank shard [{self.start}, {self.end}) expects features of shape "
                f"({self.num_rows}, {self.dim}), got {tuple(feats_shard.shape)}"
            )
        rows = feats_shard.detach()
        if normalize:
            rows = F.normalize(rows.float(), dim=1)
        self.rows.copy_(rows.to(device=self.rows.device, dtype=self.rows.dtype))

    def owns(self, indices: torch.Tensor) -> torch.Tensor:
        """Bool tensor: which global ``indices`` fall in this shard."""
        return (indices >= self.start) & (indices < self.end)

    @torch.no_grad()
    def update(
        self, indices_B: torch.Tensor, feats_BD: torch.Tensor, momentum: float = 0.2,
        num_rounds: int | None = None, validate: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply ``v <- normalise(momentum * v + (1 - momentum) * x)`` to owned rows.

        Repeated indices are applied in batch order, one after the other. Returns
        ``(delta_BD, owned_B)``: ``delta_BD`` (float64) is each occurrence's own step
        ``new - old`` (zero where not owned), so that adding all deltas of a row to its old
        value gives its final value; ``owned_B`` marks the positions this shard updated.

        ``num_rounds`` (optional) is the largest number of times any index occurs in the batch,
        known to the caller from a host copy of the indices. With it the update runs exactly
        that many masked rounds and never waits for the device (no host synchronisation);
        occurrences beyond it would be left out, so it must not be too small. ``validate=False``
        skips the index range check, which reads the indices back to the host.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must lie in [0, 1], got {momentum!r}")
        if indices_B.dim() != 1 or feats_BD.dim() != 2 or feats_BD.shape != (indices_B.numel(), self.dim):
            raise ValueError(
                f"update expects indices (B,) and features (B, {self.dim}), got "
                f"{tuple(indices_B.shape)} and {tuple(feats_BD.shape)}"
            )
        device = self.rows.device
        indices_B = indices_B.to(device=device, dtype=torch.long)
        feats_BD = feats_BD.detach().to(device=device, dtype=torch.float32)
        if validate and indices_B.numel() and (int(indices_B.min()) < 0 or int(indices_B.max()) >= self.num_total):
            raise ValueError(
                f"bank indices must lie in [0, {self.num_total}), got range "
                f"[{int(indices_B.min())}, {int(indices_B.max())}]"
            )
        owned_B = self.owns(indices_B)
        delta_BD = torch.zeros(indices_B.numel(), self.dim, device=device, dtype=torch.float64)
        if num_rounds is not None:
            return self._update_in_rounds(indices_B, feats_BD, momentum, owned_B, delta_BD, num_rounds)
        if not bool(owned_B.any()):
            return delta_BD, owned_B
        positions_P = owned_B.nonzero().squeeze(1)
        occurrence_P = _occurrence_B(indices_B[positions_P])
        for round_idx in range(int(occurrence_P.max()) + 1):
            step_positions = positions_P[occurrence_P == round_idx]
            local_rows = indices_B[step_positions] - self.start
            old_rows = self.rows[local_rows]
            mixed = momentum * old_rows.float() + (1.0 - momentum) * feats_BD[step_positions]
            new_rows = F.normalize(mixed, dim=1).to(self.rows.dtype)
            self.rows[local_rows] = new_rows
            delta_BD[step_positions] = new_rows.double() - old_rows.double()
        return delta_BD, owned_B

    def _update_in_rounds(self, indices_B: torch.Tensor, feats_BD: torch.Tensor, momentum: float,
                          owned_B: torch.Tensor, delta_BD: torch.Tensor,
                          num_rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The update as ``num_rounds`` fixed-shape rounds: no boolean indexing, no host sync.

        Round r updates the r-th occurrence of every owned index. Positions not updated in a
        round read and write the scratch row, so every real row is written at most once per round.
        """
        if num_rounds < 0:
            raise ValueError(f"num_rounds must be >= 0, got {num_rounds!r}")
        occurrence_B = _occurrence_B(indices_B)  # equal indices share ownership, so owned-only counts match
        scratch = torch.full_like(indices_B, self.num_rows)
        local_B = indices_B - self.start
        for round_idx in range(num_rounds):
            selected_B = owned_B & (occurrence_B == round_idx)
            target_B = torch.where(selected_B, local_B, scratch)
            old_rows = self._storage[target_B]
            mixed = momentum * old_rows.float() + (1.0 - momentum) * feats_BD
            new_rows = F.normalize(mixed, dim=1).to(self.rows.dtype)
            self._storage.index_copy_(0, target_B, new_rows)
            step_BD = new_rows.double() - old_rows.double()
            delta_BD = torch.where(selected_B[:, None], step_BD, delta_BD)
        return delta_BD, owned_B

    def state_dict(self) -> dict:
        """Rows and shard layout, for checkpoints."""
        return {"rows": self.rows.clone(), "num_total": self.num_total, "start": self.start, "end": self.end}

    def load_state_dict(self, state: dict) -> None:
        """Restore rows saved by :meth:`state_dict` for the same shard layout."""
        layout = (state["num_total"], state["start"], state["end"])
        if layout != (self.num_total, self.start, self.end) or tuple(state["rows"].shape) != tuple(self.rows.shape):
            raise ValueError(
                f"bank state holds rows [{state['start']}, {state['end']}) of {state['num_total']} "
                f"with shape {tuple(state['rows'].shape)}, but this shard is [{self.start}, {self.end}) "
                f"of {self.num_total} with shape {tuple(self.rows.shape)}; re-shard the full bank "
                f"(same world size, or load the gathered rows with load())"
            )
        self.rows.copy_(state["rows"].to(device=self.rows.device, dtype=self.rows.dtype))


class ClusterCentres:
    """Running per-cluster sums and counts (float64 sums) whose means equal the bank means exactly.

    Build from :meth:`local_sums` (all-reduced by the caller), then keep in step with
    :meth:`apply_delta` after every bank update.
    """

    def __init__(self, sums_MD: torch.Tensor, counts_M: torch.Tensor):
        if sums_MD.dim() != 2 or counts_M.shape != (sums_MD.shape[0],):
            raise ValueError(
                f"sums must be M x D and counts (M,), got {tuple(sums_MD.shape)} and {tuple(counts_M.shape)}"
            )
        self.sums_MD = sums_MD.to(torch.float64).clone()
        self.counts_M = counts_M.to(device=sums_MD.device, dtype=torch.long).clone()

    @staticmethod
    @torch.no_grad()
    def local_sums(bank: InstanceBank, labels_N: torch.Tensor, num_clusters: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-cluster float64 sums ``(M, D)`` and counts ``(M,)`` over this shard's rows.

        ``labels_N`` is the full label vector (one per dataset index); rows labelled -1 are
        ignored. The caller all-reduces (sums) both results across ranks.
        """
        if labels_N.dim() != 1 or labels_N.numel() != bank.num_total:
            raise ValueError(
                f"labels_N must hold one label per dataset index ({bank.num_total}), got shape {tuple(labels_N.shape)}"
            )
        device = bank.rows.device
        labels_S = labels_N[bank.start:bank.end].to(device=device, dtype=torch.long)
        if labels_S.numel() and (int(labels_S.min()) < -1 or int(labels_S.max()) >= num_clusters):
            raise ValueError(
                f"labels must lie in [-1, {num_clusters}), got range [{int(labels_S.min())}, {int(labels_S.max())}]"
            )
        keep_S = labels_S >= 0
        sums_MD = torch.zeros(num_clusters, bank.dim, device=device, dtype=torch.float64)
        step = max(1, SUM_CHUNK_ENTRIES // bank.dim)
        for lo in range(0, bank.num_rows, step):  # row order kept: chunks add one after the other
            keep = keep_S[lo:lo + step]
            index_add_(sums_MD, labels_S[lo:lo + step][keep], bank.rows[lo:lo + step][keep].double())
        counts_M = torch.bincount(labels_S[keep_S], minlength=num_clusters)
        return sums_MD, counts_M

    @property
    def num_clusters(self) -> int:
        """Number of clusters M."""
        return self.sums_MD.shape[0]

    @torch.no_grad()
    def apply_delta(self, labels_B: torch.Tensor, delta_BD: torch.Tensor, validate: bool = True) -> None:
        """Add each row delta of the global batch to its cluster's sum; label -1 is ignored.

        ``validate=False`` skips the label range check (a host synchronisation), for callers that
        checked the labels once when they were set.
        """
        if labels_B.dim() != 1 or delta_BD.shape != (labels_B.numel(), self.sums_MD.shape[1]):
            raise ValueError(
                f"apply_delta expects labels (B,) and deltas (B, {self.sums_MD.shape[1]}), got "
                f"{tuple(labels_B.shape)} and {tuple(delta_BD.shape)}"
            )
        labels_B = labels_B.to(device=self.sums_MD.device, dtype=torch.long)
        if validate and labels_B.numel() and (int(labels_B.min()) < -1 or int(labels_B.max()) >= self.num_clusters):
            raise ValueError(
                f"labels must lie in [-1, {self.num_clusters}), got range "
                f"[{int(labels_B.min())}, {int(labels_B.max())}]"
            )
        if self.num_clusters == 0:
            return
        # Unlabelled rows add a zero row to cluster 0 instead of being selected out (no host sync).
        keep_B1 = (labels_B >= 0)[:, None]
        deltas = torch.where(keep_B1, delta_BD.to(self.sums_MD.device, torch.float64), 0.0)
        index_add_(self.sums_MD, labels_B.clamp(min=0), deltas)

    def centres(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Cluster means ``(M, D)`` of the bank rows; empty clusters are zero."""
        counts_M1 = self.counts_M.clamp(min=1).to(torch.float64)[:, None]
        means_MD = torch.where(self.valid()[:, None], self.sums_MD / counts_M1, torch.zeros_like(self.sums_MD))
        return means_MD.to(dtype)

    def valid(self) -> torch.Tensor:
        """Bool ``(M,)``: clusters with at least one member."""
        return self.counts_M > 0

    def state_dict(self) -> dict:
        """Sums and counts, for checkpoints."""
        return {"sums": self.sums_MD.clone(), "counts": self.counts_M.clone()}

    def load_state_dict(self, state: dict, device: torch.device | str | None = None) -> None:
        """Restore sums and counts saved by :meth:`state_dict`, onto ``device`` (default: where they are now)."""
        sums, counts = state["sums"], state["counts"]
        if sums.dim() != 2 or counts.shape != (sums.shape[0],):
            raise ValueError(
                f"centre state must hold sums M x D and counts (M,), got {tuple(sums.shape)} and {tuple(counts.shape)}"
            )
        device = self.sums_MD.device if device is None else torch.device(device)
        self.sums_MD = sums.to(device=device, dtype=torch.float64).clone()
        self.counts_M = counts.to(device=device, dtype=torch.long).clone()
