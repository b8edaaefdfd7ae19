"""Argument checks shared by the input pipelines, so both refuse the same inputs with the same words."""

from __future__ import annotations

from cacl_dist.data.epoch_plan import EpochPlan


def check_train_inputs(plan: EpochPlan, num_records: int, start_iter: int) -> None:
    """ValueError unless the plan indexes ``num_records`` records and ``start_iter`` lies in the plan."""
    indices = plan.indices
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= num_records):
        raise ValueError(
            f"the epoch plan indexes images {int(indices.min())}..{int(indices.max())} but there are "
            f"{num_records} training records; build the sampler from labels of this record list")
    check_start_iter(plan, start_iter)


def check_start_iter(plan: EpochPlan, start_iter: int) -> None:
    """ValueError unless ``0 <= start_iter <= plan.num_iters``."""
    if not 0 <= start_iter <= plan.num_iters:
        raise ValueError(f"start_iter={start_iter} is outside the plan's 0..{plan.num_iters} iterations")


def check_eval_inputs(num_records: int, batch_size: int, start: int, end: int | None) -> int:
    """The end of the evaluation range ``records[start:end]`` (None = all); ValueError when invalid."""
    end = num_records if end is None else end
    if not 0 <= start <= end <= num_records:
        raise ValueError(f"eval range start={start} end={end} must satisfy 0 <= start <= end <= {num_records}")
    if batch_size < 1:
        raise ValueError(f"eval batch_size={batch_size} must be at least 1")
    return end


__all__ = ["check_eval_inputs", "check_start_iter", "check_train_inputs"]
