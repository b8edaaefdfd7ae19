"""Both instance banks of a run, each rank holding its own rows, and their checkpoint entries."""

from __future__ import annotations

import torch

from cacl_dist.distributed import comm
from cacl_dist.memory import ClusterCentres, InstanceBank


class MemoryBanks:
    """The RGB and grey banks (N x D each); this rank owns rows ``shard`` = [start, end) of both."""

    def __init__(self, num_total: int, dim: int, shard: tuple[int, int], device: torch.device | str) -> None:
        self.shard = shard
        self.rgb = InstanceBank(num_total, dim, *shard, device=device)
        self.gray = InstanceBank(num_total, dim, *shard, device=device)

    def state_dict(self) -> dict:
        """``bank_rgb`` and ``bank_gray``, gathered whole to rank 0 on the CPU (None on the other ranks).

        A collective call: every rank must make it.
        """
        return {"bank_rgb": comm.gather_cat(self.rgb.rows, dst=0, device="cpu"),
                "bank_gray": comm.gather_cat(self.gray.rows, dst=0, device="cpu")}

    def load_state_dict(self, state: dict) -> None:
        """Take this rank's rows of the whole banks in `state` (so the world size may differ from the saved run's)."""
        start, end = self.shard
        self.rgb.load(state["bank_rgb"][start:end], normalize=False)
        self.gray.load(state["bank_gray"][start:end], normalize=False)



def exact_centres(bank: InstanceBank, assignment_N: torch.Tensor, num_groups: int) -> ClusterCentres:
    """Centres of ``num_groups`` groups of bank rows (``assignment_N``: each row's group, -1 for none): each rank
    sums its own rows per group in float64, one all-reduce adds the ranks' sums."""
    sums, counts = ClusterCentres.local_sums(bank, assignment_N, num_groups)
    return ClusterCentres(comm.all_reduce_sum(sums), comm.all_reduce_sum(counts))


def saved_centres(saved: dict, device: torch.device | str) -> ClusterCentres:
    """The centres of a checkpoint entry (``ClusterCentres.state_dict``) on ``device``."""
    centres = ClusterCentres(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1))
    centres.load_state_dict(saved, device=device)
    return centres

__all__ = ["MemoryBanks", "exact_centres", "saved_centres"]
