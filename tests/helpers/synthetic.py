"""The synthetic generator's identities without writing any image."""

from __future__ import annotations

from cacl_dist.data.synthetic import IdentitySpec, make_identity


def identity_specs(num_ids: int, seed: int = 0) -> list[IdentitySpec]:
    """The specs of pids 1..num_ids, as generate_synthetic draws them."""
    return [make_identity(seed, pid) for pid in range(1, num_ids + 1)]
