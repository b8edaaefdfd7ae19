"""The released code's identity sampler (train.sampler=released): other-camera draws with
replacement below K, same-camera fallback, and each pass dropping its last partial batch."""

from collections import Counter

import numpy as np
import pytest

from cacl_dist.config import ConfigError, load_config
from cacl_dist.data.epoch_plan import plan_epoch
from cacl_dist.data.sampler import IdentitySampler

K = 4


def _released(labels, cams, batch_size, seed=0):
    return IdentitySampler(np.asarray(labels), np.asarray(cams), batch_size, K, seed, policy="released")


def _check_released_block(block, labels, cams):
    """Assert the released rule for one block: anchor, then K - 1 images of one pool."""
    anchor, rest = int(block[0]), [int(i) for i in block[1:]]
    members = set(np.flatnonzero(labels == labels[anchor]).tolist())
    other = {i for i in members if cams[i] != cams[anchor]}
    pool = other if other else members - {anchor}
    assert len(rest) == K - 1 and set(rest) <= pool
    if len(pool) >= K:
        assert len(set(rest)) == K - 1


def test_blocks_follow_the_released_rule():
    rng = np.random.default_rng(3)
    labels = np.r_[np.repeat(np.arange(40), 2), rng.integers(0, 40, 320)]
    cams = rng.integers(0, 3, labels.size)
    plan = _released(labels, cams, 32, seed=1).plan(0, 60)
    blocks = plan.indices.reshape(-1, K)  # no singletons and batch % K == 0: blocks are aligned
    for block in blocks:
        _check_released_block(block, labels, cams)


def test_few_other_camera_images_are_drawn_with_replacement():
    # Identity 0: cameras [0, 0, 0, 1]: an anchor on camera 0 gets image 3 three times; an anchor
    # on camera 1 gets three of images 0-2 with replacement. Identity 1: one camera, three
    # images: two others drawn with replacement, never the anchor. Identity 2: five cameras.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    cams = np.array([0, 0, 0, 1, 5, 5, 5, 0, 1, 2, 3, 4])
    plan = _released(labels, cams, 12, seed=2).plan(0, 300)
    repeats = Counter()
    for block in plan.indices.reshape(-1, K):
        _check_released_block(block, labels, cams)
        anchor, rest = int(block[0]), block[1:].tolist()
        if labels[anchor] == 0 and anchor != 3:
            assert rest == [3, 3, 3]
        if labels[anchor] in (0, 1):
            repeats[int(labels[anchor])] += len(set(rest)) < len(rest)
        if labels[anchor] == 2:
            assert len(set(rest)) == K - 1
    assert repeats[0] > 50 and repeats[1] > 50  # with replacement, not distinct


def test_each_pass_drops_its_last_partial_batch():
    # Five identities of several images (blocks of 4) and two singletons: a pass has 22 images,
    # two batches of 8; six images of every pass are dropped, and no batch spans two passes.
    labels = np.array([0] * 5 + [1] * 3 + [2] * 6 + [3] * 2 + [4] * 4 + [5, 6])
    cams = np.arange(labels.size) % 3
    plan = _released(labels, cams, 8, seed=4).plan(0, 10)
    assert plan.indices.shape == (10, 8)
    for p in range(5):  # batches 2p and 2p + 1 are the first 16 images of pass p
        runs = []  # (identity, length) of consecutive images
        for label in labels[plan.indices[2 * p: 2 * p + 2].reshape(-1)].tolist():
            if runs and runs[-1][0] == label:
                runs[-1][1] += 1
            else:
                runs.append([label, 1])
        assert len({label for label, _ in runs}) == len(runs)  # every identity at most once per pass
        full = [K if label < 5 else 1 for label, _ in runs]
        assert [length for _, length in runs[:-1]] == full[:-1] and runs[-1][1] <= full[-1]
    streamed = IdentitySampler(labels, cams, 8, K, 4).plan(0, 10)  # 'cacl': passes run on into batches
    assert not np.array_equal(streamed.indices, plan.indices)


def test_released_plan_is_deterministic_and_rejects_too_short_passes():
    labels = np.repeat(np.arange(30), 5)
    cams = np.tile(np.arange(5), 30)
    a = _released(labels, cams, 32, seed=7).plan(2, 20)
    b = _released(labels.copy(), cams.copy(), 32, seed=7).plan(2, 20)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.aug_seeds, b.aug_seeds)
    assert not np.array_equal(a.indices, _released(labels, cams, 32, seed=7).plan(3, 20).indices)
    with pytest.raises(ValueError, match="train.sampler 'released'"):
        _released(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1]), 16).plan(0, 1)
    with pytest.raises(ValueError, match="sampler policy"):
        IdentitySampler(labels, cams, 32, K, 0, policy="random")


def test_config_key_selects_the_policy():
    assert load_config(None).train.sampler == "cacl"
    assert load_config(None, ["train.sampler=released"]).train.sampler == "released"
    with pytest.raises(ConfigError, match="train.sampler"):
        load_config(None, ["train.sampler=pk"])
    labels = np.repeat(np.arange(30), 5)
    cams = np.tile(np.arange(5), 30)
    common = dict(epoch=0, num_iters=6, batch_size=32, num_instances=K, seed=0, num_clusters=30)
    released = plan_epoch(labels, cams, sampler="released", **common)
    np.testing.assert_array_equal(released.indices, _released(labels, cams, 32).plan(0, 6).indices)
