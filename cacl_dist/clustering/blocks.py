"""Block sizes of the neighbour search, planned from a memory budget (no allocation here).

The search (:mod:`cacl_dist.clustering.knn`) multiplies square low-precision blocks of X X^T
(``search`` rows and columns) and redoes unproven rows in float64 strips against all N points
(``strip`` rows). Both are sized so that the temporaries of one block stay within ``budget``
bytes: a fixed default per device type (not the free memory, so that a machine type always
cuts the work the same way and gives the same float64 roundings), or the caller's. The byte
counts below follow the tensors each step creates; they are upper estimates, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass

# Bytes per block: small on a CPU (cache-friendly), a few GiB on a GPU (few kernel launches).
DEFAULT_BUDGET = {"cpu": 128 << 20, "cuda": 4 << 30}
# Largest low-precision block: beyond this, larger blocks stop paying off.
SEARCH_CAP = {"cpu": 2048, "cuda": 16384}
# Float64 unit rows per tile (UnitRows.tile), as UnitRows chooses them.
TILE = {"cpu": 2048, "cuda": 32768}

# Bytes per element of the low-precision formats (input rows, block product).
_FORMAT_BYTES = {"float32": 4, "tfloat32": 4, "bfloat16": 2}


@dataclass(frozen=True)
class BlockPlan:
    """Block sizes for one search."""

    search: int
    """Rows (and columns) of one low-precision block of X X^T."""
    strip: int
    """Rows of one float64 strip (rows against all N points)."""


def device_key(device_type: str) -> str:
    """"cuda" for CUDA, "cpu" for everything else (the defaults above are keyed by it)."""
    return "cuda" if device_type == "cuda" else "cpu"


def search_bytes(rows: int, dim: int, precision: str) -> int:
    """Bytes of the temporaries of one ``rows`` x ``rows`` low-precision block.

    Row and column tiles in the input format (plus the float32 quotient they are rounded
    from), the product in that format, its float32 copy (bfloat16 only), the mask of entries
    above the running candidates and a float32 copy for a column-wise top-k.
    """
    size = _FORMAT_BYTES[precision]
    per_entry = size + (4 if size != 4 else 0) + 1 + 4
    return rows * rows * per_entry + rows * dim * (2 * size + 4)


def strip_bytes(rows: int, num_points: int, dim: int, tile: int) -> int:
    """Bytes of one float64 strip of ``rows`` rows against ``num_points`` points.

    The strip itself (8 bytes per entry; distances are compared in place, not stored), the
    float64 rows of the strip (and their float32 gather), one float64 tile of unit rows, the
    product of the strip rows with that tile before it is copied in, and the float64 distances
    plus mask of one tile-wide column chunk while counting ties.
    """
    chunk = min(tile, num_points)
    per_row = 8 * num_points + 8 * chunk + 12 * dim + 17 * chunk
    return rows * per_row + 8 * chunk * dim


def plan_blocks(num_points: int, dim: int, device_type: str, precision: str = "float32",
                budget: int | None = None, tile: int | None = None) -> BlockPlan:
    """Block sizes of a search over ``num_points`` rows of length ``dim``.

    Args:
        num_points, dim: N and D of the features.
        device_type: ``"cuda"`` or ``"cpu"`` (any other type is planned as a CPU).
        precision: the low-precision format of the search blocks (``"float32"``,
            ``"tfloat32"`` or ``"bfloat16"``); ``"float64"`` plans only the strips (``search``
            is then the strip size too).
        budget: bytes one block may use (default: ``DEFAULT_BUDGET`` of the device type).
        tile: float64 unit rows per tile (default: ``TILE`` of the device type).

    Returns:
        a :class:`BlockPlan`; every size is at least 1 and at most N, and a size above 1 keeps
        its block within the budget. Search blocks below the cap are rounded down to a
        multiple of 256 (matrix-product friendly).
    """
    key = device_key(device_type)
    budget = DEFAULT_BUDGET[key] if budget is None else int(budget)
    tile = TILE[key] if tile is None else int(tile)
    strip = _largest(lambda rows: strip_bytes(rows, num_points, dim, tile) <= budget, num_points, 1)
    if precision not in _FORMAT_BYTES:
        return BlockPlan(search=strip, strip=strip)
    cap = min(SEARCH_CAP[key], num_points)
    search = _largest(lambda rows: search_bytes(rows, dim, precision) <= budget, cap, 256)
    return BlockPlan(search=search, strip=strip)


def _largest(fits, cap: int, granule: int) -> int:
    """The largest size in [1, cap] that ``fits`` (1 if none does), rounded down to a multiple
    of ``granule`` when above it; ``fits`` must be monotone."""
    if cap <= 1 or not fits(1):
        return 1
    if fits(cap):
        return cap
    lo, hi = 1, cap  # fits(lo), not fits(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo // granule * granule if lo > granule else lo
