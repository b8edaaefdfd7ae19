"""The one road for pretrained backbone weights: read a local file, recognise its layout, load what fits.

Nothing is downloaded. The file is read with ``torch.load(weights_only=True)`` (tensors, containers and
plain values; ``argparse.Namespace`` is allowed as well, since DINO-style training checkpoints store
their arguments in one). The layout is recognised from the contents, never from the file name:

* Containers are unwrapped: ``teacher`` (DINO / TransReID-SSL / PASS training checkpoints: the
  teacher, as their conversion scripts take), else ``student``, ``state_dict``, ``model``.
* ``module.`` prefixes (DataParallel / DDP) are stripped, then the sub-network prefix under which the
  most keys fit the body: none, ``encoder_q.`` (MoCo v1/v2 checkpoints, LUPerson's self-supervised
  ResNet-50: ``state_dict`` / ``module.encoder_q.*``), ``backbone.`` (DINO), ``base.`` (TransReID models).
* Heads that no body has are skipped and counted: ``fc.*`` (ImageNet classifiers, MoCo's projector),
  ``head.*`` (timm and DINO heads), ``classifier``, ``bottleneck`` (re-ID necks), PASS's part tokens.
* ViT position embeddings are resized to the body's patch grid (:func:`resize_pos_embed`); PASS files,
  which keep the class token's position apart (``cls_pos``), are joined to timm's layout first.

Then every tensor whose name and shape fit is copied; the log says how many of the body's tensors were
loaded (BatchNorm ``num_batches_tracked`` counters aside, which older files lack) and lists missing and
unexpected keys. A shape that does not fit, or less than :data:`MIN_FIT` of the body loaded, stops with
one line naming the file.
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cacl_dist.errors import MissingFileError, UserError
from cacl_dist.runs.logs import get_logger

MIN_FIT = 0.9
"""Smallest share of the body's tensors a pretrained file must provide."""
WRAPPERS = ("teacher", "student", "state_dict", "model")
"""Container keys unwrapped, in this order of preference at each level."""
SUBNET_PREFIXES = ("", "encoder_q.", "backbone.", "base.")
"""Prefixes of the sub-network that holds the backbone (plain, MoCo, DINO, TransReID)."""
HEAD_PREFIXES = ("fc.", "head.", "heads.", "classifier", "bottleneck", "part_token", "part1_pos", "part2_pos",
                 "part3_pos", "dist_token")
"""Keys of heads and extra tokens that no backbone body holds: skipped, counted in the log."""
COUNTER_SUFFIX = "num_batches_tracked"


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a pretrained file, containers unwrapped and ``module.`` stripped."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"pretrained file {path} does not exist; model.pretrained takes 'none', "
                               "'imagenet' or the path of a weights file you have")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling and archive errors have several types across torch versions
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"cannot read pretrained file {path} ({first[:160]}); it must be a complete torch.save "
                        "file of tensors, e.g. a published ImageNet or person-pretrained weights file") from None
    state = loaded
    while isinstance(state, dict):
        inner = next((state[key] for key in WRAPPERS if isinstance(state.get(key), dict)), None)
        if inner is None:
            break
        state = inner
    tensors = {}
    if isinstance(state, dict):
        for key, value in state.items():
            if isinstance(key, str) and isinstance(value, torch.Tensor):
                while key.startswith("module."):
                    key = key[len("module."):]
                tensors[key] = value
    if not tensors:
        raise UserError(f"pretrained file {path} holds no named tensors (got {type(loaded).__name__}); pass a "
                        "state dict file, e.g. torch.save(model.state_dict(), path)")
    return tensors


def select_subnet(state: dict[str, torch.Tensor], wanted: set[str]) -> tuple[dict[str, torch.Tensor], str]:
    """The keys under the prefix (:data:`SUBNET_PREFIXES`) under which most keys fit ``wanted``; and the prefix."""
    def fits(prefix):
        return sum(1 for key in state if key.startswith(prefix) and key[len(prefix):] in wanted)

    prefix = max(SUBNET_PREFIXES, key=fits)  # ties keep the earlier (no prefix first)
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}, prefix


def infer_grid(num_patches: int, like: tuple[int, int]) -> tuple[int, int]:
    """The patch grid ``rows x cols`` a file's ``num_patches`` position embeddings were made for.

    A square number is a square grid (ImageNet files: 196 = 14 x 14 at 224 x 224). Otherwise the
    factorisation whose aspect is closest to the grid ``like`` is taken: a person-pretrained file keeps
    its 2:1 grid (128 = 16 x 8 at 256 x 128), as TransReID-SSL's loader assumes with ``hw_ratio`` 2.
    """
    side = math.isqrt(num_patches)
    if side * side == num_patches:
        return side, side
    target = math.log(like[0] / like[1])
    pairs = [(rows, num_patches // rows) for rows in range(1, num_patches + 1) if num_patches % rows == 0]
    return min(pairs, key=lambda pair: (abs(math.log(pair[0] / pair[1]) - target), -pair[0]))


def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], num_prefix: int = 1) -> torch.Tensor:
    """Position embeddings ``1 x (prefix + n) x D`` for a ``grid`` of patches: the prefix (class token)
    kept, the patch grid interpolated bilinearly in 2-D (unchanged when the grid is the same)."""
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = infer_grid(patches.shape[1], grid)
    if tuple(old) == tuple(grid):
        return pos_embed
    dim = patches.shape[2]
    image = patches.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2).float()
    resized = F.interpolate(image, size=tuple(grid), mode="bilinear", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim).to(pos_embed.dtype)
    return torch.cat([prefix, resized], dim=1)


def _adapt_vit(state: dict[str, torch.Tensor], body: nn.Module) -> list[str]:
    """Join PASS's separate class position, resize ``pos_embed`` to the body's grid; returns log notes."""
    notes = []
    if "cls_pos" in state and "pos_embed" in state:
        state["pos_embed"] = torch.cat([state.pop("cls_pos"), state["pos_embed"]], dim=1)
        notes.append("class-token position joined to pos_embed (PASS layout)")
    target = body.state_dict().get("pos_embed")
    given = state.get("pos_embed")
    if target is not None and given is not None and given.dim() == 3 and given.shape != target.shape:
        grid = tuple(body.patch_embed.grid_size)
        state["pos_embed"] = resize_pos_embed(given, grid)
        notes.append(f"pos_embed resized from {given.shape[1] - 1} patches to the {grid[0]} x {grid[1]} grid")
    return notes


def _counted(keys) -> list[str]:
    return sorted(key for key in keys if not key.endswith(COUNTER_SUFFIX))


def load_pretrained(body: nn.Module, path: str | os.PathLike, what: str = "backbone") -> dict[str, int]:
    """Load the pretrained file ``path`` into ``body`` (see the module docstring); returns the counts.

    Raises a one-line UserError naming the file when it cannot be read, a shape does not fit, or less
    than :data:`MIN_FIT` of the body's tensors are in it.
    """
    path = Path(path)
    expected = body.state_dict()
    state, prefix = select_subnet(read_state_dict(path), set(expected))
    skipped = [key for key in state if key not in expected and key.startswith(HEAD_PREFIXES)]
    for key in skipped:
        del state[key]
    notes = _adapt_vit(state, body) if "pos_embed" in expected else []
    wrong = [f"{key} {tuple(state[key].shape)} vs {tuple(expected[key].shape)}"
             for key in sorted(set(state) & set(expected)) if state[key].shape != expected[key].shape]
    fitting = {key: value for key, value in state.items() if key in expected and value.shape == expected[key].shape}
    missing, unexpected = _counted(set(expected) - set(fitting)), sorted(set(state) - set(expected))
    total, loaded = len(_counted(expected)), len(_counted(fitting))
    if wrong or loaded < MIN_FIT * total:
        problem = f"{len(wrong)} shape(s) differ (e.g. {', '.join(wrong[:3])})" if wrong else \
            f"only {loaded} of the {total} tensors of {what} fit (missing e.g. {', '.join(missing[:3])})"
        raise UserError(f"pretrained file {path} does not fit {what}: {problem}; pass weights made for this "
                        "backbone (model.backbone) or model.pretrained=none")
    body.load_state_dict(fitting, strict=False)
    log = get_logger()
    found = f" under '{prefix}'" if prefix else ""
    log.info("pretrained %s: loaded %d of %d tensors from %s%s%s%s", what, loaded, total, path, found,
             f", {len(skipped)} head tensors skipped" if skipped else "", "".join(f"; {n}" for n in notes))
    if missing:
        log.warning("pretrained %s: %d tensors not in %s, left as initialised: %s", what, len(missing), path,
                    ", ".join(missing))
    if unexpected:
        log.warning("pretrained %s: %d tensors of %s unused: %s", what, len(unexpected), path, ", ".join(unexpected))
    return {"loaded": loaded, "total": total, "skipped": len(skipped), "unexpected": len(unexpected)}


__all__ = ["HEAD_PREFIXES", "MIN_FIT", "SUBNET_PREFIXES", "infer_grid", "load_pretrained", "read_state_dict",
           "resize_pos_embed", "select_subnet"]
