"""Procedurally drawn pedestrians in Market-1501 layout, for tests and CPU quick starts.

Identity lives in shape and texture (garment cut, body proportions, hair, sleeves, bag, the
pattern of the upper garment with its own frequency and phase). Colour is a nuisance: every
identity takes its colours from a small set of palettes shared by many identities, and every
camera applies its own colour cast and brightness. A model that ignores colour and looks at
shape and texture therefore separates identities better, which is what CACL's grayscale
branch is meant to encourage.

Run ``python -m cacl_dist.data.synthetic --root DIR`` to write a dataset. Which folders the
generator may write into is decided in :mod:`cacl_dist.data.synthetic_folder`.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cacl_dist.data.synthetic_folder import ensure_set
from cacl_dist.errors import UserError

GENERATOR_VERSION = 2
"""Bumped whenever the drawing changes, so that cached datasets are regenerated."""

TEXTURES = ("plain", "hstripes", "vstripes", "checks", "dots", "diagonal")
_SUPERSAMPLE = 2

# Shared palettes (RGB in [0, 1]): upper, upper pattern, lower, bag, hair, skin.
PALETTES = np.array(
    [
        [[0.75, 0.15, 0.15], [0.95, 0.85, 0.80], [0.15, 0.15, 0.30],
         [0.30, 0.20, 0.10], [0.10, 0.08, 0.05], [0.90, 0.72, 0.60]],
        [[0.15, 0.35, 0.75], [0.90, 0.90, 0.95], [0.25, 0.25, 0.25],
         [0.70, 0.55, 0.30], [0.25, 0.15, 0.08], [0.80, 0.62, 0.48]],
        [[0.20, 0.55, 0.25], [0.10, 0.15, 0.10], [0.60, 0.55, 0.45],
         [0.15, 0.15, 0.15], [0.05, 0.05, 0.05], [0.60, 0.45, 0.35]],
        [[0.85, 0.80, 0.30], [0.35, 0.30, 0.10], [0.20, 0.30, 0.55],
         [0.55, 0.10, 0.10], [0.45, 0.30, 0.15], [0.92, 0.78, 0.66]],
        [[0.85, 0.85, 0.85], [0.20, 0.20, 0.25], [0.10, 0.10, 0.10],
         [0.20, 0.35, 0.60], [0.15, 0.10, 0.05], [0.75, 0.58, 0.45]],
        [[0.45, 0.25, 0.55], [0.95, 0.75, 0.30], [0.50, 0.40, 0.30],
         [0.85, 0.85, 0.80], [0.08, 0.06, 0.04], [0.55, 0.40, 0.30]],
    ],
    dtype=np.float32,
)


@dataclass(frozen=True)
class IdentitySpec:
    """What makes one synthetic person: palette (colour) plus shape and texture attributes."""

    palette: int
    long_coat: bool
    skirt: bool
    long_hair: bool
    long_sleeves: bool
    bag: str  # "none", "backpack" or "handbag"
    bag_side: int  # -1 left, +1 right
    texture: str  # one of TEXTURES
    texture_freq: float  # pattern repeats per person height
    texture_phase: float
    shoulder: float  # half-width of the shoulders / person height
    head: float  # head radius / person height
    leg_width: float  # half-width of a trouser leg / person height


@dataclass(frozen=True)
class CameraSpec:
    """One camera's colour cast (per-channel gain), brightness offset and background colour."""

    gain: tuple[float, float, float]
    offset: float
    background: tuple[float, float, float]


def make_identity(seed: int, pid: int) -> IdentitySpec:
    """The identity ``pid`` of the dataset with ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, 1, pid])
    return IdentitySpec(
        palette=int(rng.integers(len(PALETTES))),
        long_coat=bool(rng.random() < 0.5),
        skirt=bool(rng.random() < 0.35),
        long_hair=bool(rng.random() < 0.4),
        long_sleeves=bool(rng.random() < 0.5),
        bag=str(rng.choice(["none", "backpack", "handbag"])),
        bag_side=int(rng.choice([-1, 1])),
        texture=str(rng.choice(TEXTURES)),
        texture_freq=float(rng.uniform(7.0, 18.0)),
        texture_phase=float(rng.uniform(0.0, 1.0)),
        shoulder=float(rng.uniform(0.095, 0.15)),
        head=float(rng.uniform(0.05, 0.075)),
        leg_width=float(rng.uniform(0.028, 0.045)),
    )


def make_camera(seed: int, cam: int) -> CameraSpec:
    """The colour conditions of camera ``cam`` (0-based) of the dataset with ``seed``."""
    rng = np.random.default_rng([seed, 0, cam])
    gain = rng.uniform(0.6, 1.4, size=3)
    return CameraSpec(
        gain=tuple(float(g) for g in gain / gain.mean() * rng.uniform(0.85, 1.15)),
        offset=float(rng.uniform(-0.1, 0.1)),
        background=tuple(float(b) for b in rng.uniform(0.2, 0.8, size=3)),
    )


def _pattern(texture: str, u: np.ndarray, v: np.ndarray, freq: float, phase: float) -> np.ndarray:
    """Boolean mask of the secondary colour of a garment pattern in person coordinates."""
    if texture == "hstripes":
        return (u * freq + phase) % 1.0 < 0.5
    if texture == "vstripes":
        return (v * freq + phase) % 1.0 < 0.5
    if texture == "checks":
        return ((u * freq * 0.7 + phase) % 1.0 < 0.5) ^ ((v * freq * 0.7 + phase) % 1.0 < 0.5)
    if texture == "dots":
        du = (u * freq + phase) % 1.0 - 0.5
        dv = (v * freq + phase) % 1.0 - 0.5
        return du * du + dv * dv < 0.09
    if texture == "diagonal":
        return ((u + v) * freq + phase) % 1.0 < 0.5
    return np.zeros(np.broadcast(u, v).shape, dtype=bool)


def _segment_mask(u, v, u0, v0, u1, v1, half_width):
    """Pixels within ``half_width`` of the segment (u0, v0)-(u1, v1); u is a column, v a row.

    Only the bounding box of the segment is evaluated (u and v are increasing).
    """
    mask = np.zeros((u.shape[0], v.shape[1]), dtype=bool)
    r0, r1 = np.searchsorted(u[:, 0], [min(u0, u1) - half_width, max(u0, u1) + half_width])
    c0, c1 = np.searchsorted(v[0], [min(v0, v1) - half_width, max(v0, v1) + half_width])
    if r0 >= r1 or c0 >= c1:
        return mask
    uu, vv = u[r0:r1], v[:, c0:c1]
    du, dv = u1 - u0, v1 - v0
    t = np.clip(((uu - u0) * du + (vv - v0) * dv) / (du * du + dv * dv), 0.0, 1.0)
    mask[r0:r1, c0:c1] = (uu - u0 - t * du) ** 2 + (vv - v0 - t * dv) ** 2 <= half_width * half_width
    return mask


# Part labels of the label map; colours come from the palette at the end.
_BG, _UPPER, _PATTERN, _LOWER, _BAG, _HAIR, _SKIN, _SHOES, _BARE_LEG = range(9)


def _part_colours(palette: np.ndarray) -> np.ndarray:
    """Colour of every part label (black for the background, which is filled in later)."""
    return np.stack(
        [np.zeros(3, np.float32), palette[0], palette[1], palette[2], palette[3], palette[4], palette[5],
         np.full(3, 0.08, np.float32), palette[5] * 0.85]
    ).astype(np.float32)


def render_person(
    spec: IdentitySpec, camera: CameraSpec, rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """Draw one image (uint8 H x W x 3) of ``spec`` seen by ``camera``, jittered by ``rng``."""
    hs, ws = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    person_h = hs * rng.uniform(0.78, 0.92)
    top = (hs - person_h) / 2 + rng.uniform(-0.04, 0.04) * hs
    centre = ws / 2 + rng.uniform(-0.08, 0.08) * ws
    # Person coordinates: u down the body (0 = top of the head, 1 = feet), v across it.
    # u is a column and v a row, so that masks broadcast to H x W only where needed.
    u = ((np.arange(hs, dtype=np.float32) - top) / person_h).astype(np.float32)[:, None]
    v = ((np.arange(ws, dtype=np.float32) - centre) / person_h).astype(np.float32)[None, :]
    labels = np.zeros((hs, ws), np.uint8)
    shade = np.ones((hs, ws), np.float32)

    head_c = spec.head + 0.01
    torso_top = 2 * spec.head + 0.025
    hip = 0.48
    coat_end = 0.72 if spec.long_coat else 0.5
    stride = rng.uniform(0.0, 0.06)
    gap = rng.uniform(0.004, 0.02)
    pattern = _pattern(spec.texture, u, v, spec.texture_freq, spec.texture_phase)
    upper = np.broadcast_to(np.where(pattern, _PATTERN, _UPPER).astype(np.uint8), (hs, ws))
    side = spec.bag_side
    abs_v, side_v = np.abs(v), side * v

    if spec.bag == "backpack":
        rows = (u > torso_top + 0.03) & (u < torso_top + 0.3)
        labels[rows & (side_v > spec.shoulder - 0.04) & (side_v < spec.shoulder + 0.06)] = _BAG
    # Legs (bare for skirts, trousers otherwise) with shoes at the bottom.
    leg_w = 0.022 if spec.skirt else spec.leg_width
    for s in (-1, 1):
        off = s * (gap + leg_w)
        leg = _segment_mask(u, v, hip, off, 0.95, off + s * stride, leg_w)
        labels[leg] = _BARE_LEG if spec.skirt else _LOWER
        labels[leg & (u > 0.93)] = _SHOES
    if spec.skirt:
        labels[(u >= hip - 0.02) & (u <= 0.7) & (abs_v <= spec.shoulder * 0.8 + (u - hip) * 0.5)] = _LOWER
    # Torso: shoulders taper to the hips, a long coat flares below them.
    half = np.where(u < hip, spec.shoulder - (u - torso_top) * (0.2 * spec.shoulder) / (hip - torso_top),
                    0.8 * spec.shoulder + (u - hip) * 0.35)
    torso = (u >= torso_top) & (u <= coat_end) & (abs_v <= half)
    labels[torso] = upper[torso]
    shade[torso] = np.broadcast_to(np.maximum(1.0 - 0.35 * (v / spec.shoulder) ** 2, 0.6), torso.shape)[torso]
    if spec.bag == "backpack":  # strap across the chest
        strap = _segment_mask(
            u, v, torso_top, side * spec.shoulder * 0.7, hip - 0.05, -side * spec.shoulder * 0.6, 0.012
        )
        labels[strap & torso] = _BAG
    # Arms swing a little; short sleeves show skin below the elbow.
    for s in (-1, 1):
        sx = s * (spec.shoulder + 0.02)
        hand = sx + rng.uniform(-0.04, 0.04) + s * 0.01
        arm = _segment_mask(u, v, torso_top + 0.02, sx, torso_top + 0.3, hand, 0.024)
        labels[arm] = upper[arm]
        shade[arm] = 0.9
        if not spec.long_sleeves:
            labels[arm & (u > torso_top + 0.14)] = _SKIN
    if spec.bag == "handbag":
        labels[(u > 0.42) & (u < 0.55) & (side_v > spec.shoulder) & (side_v < spec.shoulder + 0.09)] = _BAG
    # Head and hair; long hair falls to the shoulders on both sides of the neck.
    if spec.long_hair:
        beside_neck = (abs_v < spec.head) & (abs_v > 0.45 * spec.head)
        labels[(u > head_c) & (u < torso_top + 0.08) & beside_neck] = _HAIR
    head = ((u - head_c) / spec.head) ** 2 + (v / (0.8 * spec.head)) ** 2 <= 1.0
    labels[head] = _SKIN
    labels[head & (u < head_c - 0.25 * spec.head)] = _HAIR

    # Down-sample colour and coverage, put the person on the background at the final size.
    colour = _downsample(np.take(_part_colours(PALETTES[spec.palette]), labels, axis=0))
    colour *= _downsample(shade)[..., None]
    cover = _downsample((labels != _BG).astype(np.float32))[..., None]
    ramp = np.linspace(rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), height, dtype=np.float32)[:, None, None]
    blotch = rng.normal(0.0, 0.06, size=(-(-height // 8), -(-width // 8), 3)).astype(np.float32)
    blotch = blotch.repeat(8, axis=0).repeat(8, axis=1)[:height, :width]
    # The scene behind a person changes from image to image; the camera only tints it.
    scene = rng.uniform(0.2, 0.8, size=3).astype(np.float32)
    background = 0.3 * np.asarray(camera.background, np.float32) + 0.7 * scene + ramp + blotch
    img = colour + (1.0 - cover) * background
    # Camera colour cast and brightness, image brightness, sensor noise.
    img = img * (np.asarray(camera.gain, np.float32) * rng.uniform(0.9, 1.1)) + camera.offset
    img += rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.03))
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _downsample(arr: np.ndarray) -> np.ndarray:
    """Average non-overlapping _SUPERSAMPLE x _SUPERSAMPLE blocks of the first two axes."""
    assert _SUPERSAMPLE == 2
    return (arr[0::2, 0::2] + arr[1::2, 0::2] + arr[0::2, 1::2] + arr[1::2, 1::2]) * 0.25


def _params(num_train_ids, num_test_ids, images_per_id, num_cameras, height, width, seed) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "num_train_ids": int(num_train_ids),
        "num_test_ids": int(num_test_ids),
        "images_per_id": int(images_per_id),
        "num_cameras": int(num_cameras),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
    }


def _check_params(params: dict) -> None:
    for key in ("num_train_ids", "num_test_ids", "images_per_id", "num_cameras"):
        if params[key] < 1:
            raise UserError(f"synthetic: {key}={params[key]} must be at least 1")
    if params["images_per_id"] <= params["num_cameras"]:
        raise UserError(
            f"synthetic: images_per_id={params['images_per_id']} must exceed num_cameras={params['num_cameras']} "
            "so that every test identity keeps gallery images after the query is taken"
        )
    if params["height"] < 16 or params["width"] < 8:
        raise UserError(f"synthetic: height={params['height']} x width={params['width']} must be at least 16 x 8")
    if params["num_train_ids"] + params["num_test_ids"] > 9999:
        raise UserError("synthetic: num_train_ids + num_test_ids must stay below 10000 (4-digit pids)")
    if params["seed"] < 0:
        raise UserError(f"synthetic: seed={params['seed']} must be non-negative")


def synthetic_settings(num_train_ids: int = 60, num_test_ids: int = 40, images_per_id: int = 12,
                       num_cameras: int = 4, height: int = 128, width: int = 64, seed: int = 0) -> dict:
    """The checked settings of a set, as its ``synthetic.json`` records them (ValueError when invalid)."""
    params = _params(num_train_ids, num_test_ids, images_per_id, num_cameras, height, width, seed)
    _check_params(params)
    return params


def generate_synthetic(
    root: str,
    num_train_ids: int = 60,
    num_test_ids: int = 40,
    images_per_id: int = 12,
    num_cameras: int = 4,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    force: bool = False,
    what: str = "data.root",
) -> str:
    """Write a synthetic Market-1501-style dataset under ``root`` and return the folder that holds it.

    Train pids are 1..num_train_ids, test pids follow. Every identity has ``images_per_id``
    images spread over the cameras; for test identities the first image of every (pid, camera)
    goes to ``query/`` and the rest to ``bounding_box_test/``. A ``synthetic.json`` records the
    settings: a finished set with the same settings is used as it is (``force`` draws it again).
    The folder is ``root`` itself when it is empty or holds this set, else ``root/set-<key>`` for
    a set of other settings; a ``root`` with files the generator did not write is refused
    (:mod:`cacl_dist.data.synthetic_folder`). ``what`` names ``root`` in errors.
    """
    params = synthetic_settings(num_train_ids, num_test_ids, images_per_id, num_cameras, height, width, seed)
    return ensure_set(str(root), params, write_images, force=force, what=what)


def write_images(root: str, params: dict) -> None:
    """Draw every image of the set ``params`` into the split folders under ``root`` (which exist)."""
    seed, num_cameras, images_per_id = params["seed"], params["num_cameras"], params["images_per_id"]
    num_train_ids, height, width = params["num_train_ids"], params["height"], params["width"]
    cameras = [make_camera(seed, c) for c in range(num_cameras)]
    for pid in range(1, num_train_ids + params["num_test_ids"] + 1):
        spec = make_identity(seed, pid)
        rng = np.random.default_rng([seed, 2, pid])
        cams = rng.permutation(np.arange(images_per_id) % num_cameras)
        seen_cams: set[int] = set()
        for frame, cam in enumerate(cams.tolist()):
            if pid <= num_train_ids:
                split = "bounding_box_train"
            else:
                split = "bounding_box_test" if cam in seen_cams else "query"
                seen_cams.add(cam)
            pixels = render_person(spec, cameras[cam], rng, height, width)
            name = f"{pid:04d}_c{cam + 1}s1_{frame:06d}_00.jpg"
            Image.fromarray(pixels).save(os.path.join(root, split, name), quality=92)


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: ``python -m cacl_dist.data.synthetic --root DIR``."""
    parser = argparse.ArgumentParser(description="Write a synthetic person re-id dataset in Market-1501 layout.")
    parser.add_argument("--root", required=True, help="output folder: empty, or one the generator wrote (a set "
                        "of other settings goes into a set-<key> folder inside it)")
    parser.add_argument("--num-train-ids", type=int, default=60)
    parser.add_argument("--num-test-ids", type=int, default=40)
    parser.add_argument("--images-per-id", type=int, default=12)
    parser.add_argument("--num-cameras", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="regenerate even when synthetic.json matches")
    args = parser.parse_args(argv)
    try:
        root = _generate_from_args(args)
    except ValueError as exc:  # a folder it may not write into, invalid settings: one line, exit status 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"synthetic dataset ready at {root}")


def _generate_from_args(args: argparse.Namespace) -> str:
    return generate_synthetic(
        args.root,
        num_train_ids=args.num_train_ids,
        num_test_ids=args.num_test_ids,
        images_per_id=args.images_per_id,
        num_cameras=args.num_cameras,
        height=args.height,
        width=args.width,
        seed=args.seed,
        force=args.force,
        what="--root",
    )


if __name__ == "__main__":
    main()
