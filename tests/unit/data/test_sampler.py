"""Identity sampler: determinism, rank slicing, P x K blocks with other-camera preference."""

from collections import Counter

import numpy as np
import pytest
import torch

from cacl_dist.data.epoch_plan import EpochPlan, check_batch_order, plan_epoch
from cacl_dist.data.sampler import GlobalBatches, IdentitySampler
from tests.helpers.plans import rank_slice


def _random_labels(num_images=600, num_ids=80, num_cams=6, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.arange(num_ids), np.arange(num_ids), rng.integers(0, num_ids, num_images - 2 * num_ids)]
    return rng.permutation(labels), rng.integers(0, num_cams, num_images)


def _check_block(block, labels, camids, k):
    """Assert that one identity block follows the anchor / other camera / same camera / fill rule."""
    anchor, rest = block[0], list(block[1:])
    label = labels[anchor]
    assert len(block) == k and all(labels[i] == label for i in block)
    members = set(np.flatnonzero(labels == label).tolist())
    other = {i for i in members if camids[i] != camids[anchor]}
    same = members - other - {anchor}
    num_other = min(k - 1, len(other))
    num_same = min(k - 1 - num_other, len(same))
    picked_other, picked_same = rest[:num_other], rest[num_other : num_other + num_same]
    assert len(set(picked_other)) == num_other and set(picked_other) <= other
    assert len(set(picked_same)) == num_same and set(picked_same) <= same
    assert set(rest[num_other + num_same :]) <= members
    if len(members) >= k:
        assert len(set(block)) == k


def test_plan_shapes_and_dtypes():
    labels, cams = _random_labels()
    plan = IdentitySampler(labels, cams, batch_size=32, num_instances=4, seed=1).plan(epoch=0, num_iters=7)
    assert isinstance(plan, GlobalBatches) and plan.num_iters == 7
    assert plan.indices.shape == plan.aug_seeds.shape == (7, 32)
    assert plan.indices.dtype == plan.aug_seeds.dtype == np.int64
    assert plan.indices.min() >= 0 and plan.indices.max() < labels.size
    assert plan.aug_seeds.min() >= 0
    assert IdentitySampler(labels, cams, 32, 4, 1).plan(0, 0).indices.shape == (0, 32)


def test_plan_is_deterministic_in_seed_and_epoch():
    labels, cams = _random_labels()
    plan = IdentitySampler(labels, cams, 32, 4, seed=5).plan(3, 10)
    again = IdentitySampler(labels.copy(), cams.copy(), 32, 4, seed=5).plan(3, 10)
    np.testing.assert_array_equal(plan.indices, again.indices)
    np.testing.assert_array_equal(plan.aug_seeds, again.aug_seeds)
    for other in (IdentitySampler(labels, cams, 32, 4, seed=5).plan(4, 10),
                  IdentitySampler(labels, cams, 32, 4, seed=6).plan(3, 10)):
        assert not np.array_equal(plan.indices, other.indices)
        assert not np.array_equal(plan.aug_seeds, other.aug_seeds)
    # Fewer iterations give a prefix of the same stream.
    np.testing.assert_array_equal(IdentitySampler(labels, cams, 32, 4, seed=5).plan(3, 4).indices, plan.indices[:4])


@pytest.mark.parametrize("world_size", [1, 2, 4, 8])
def test_rank_slices_partition_the_global_batch(world_size):
    labels, cams = _random_labels()
    plan = IdentitySampler(labels, cams, 32, 4, seed=2).plan(1, 5)
    slices = [rank_slice(plan.indices, r, world_size) for r in range(world_size)]
    assert all(s.shape == (5, 32 // world_size) for s in slices)
    np.testing.assert_array_equal(np.concatenate(slices, axis=1), plan.indices)
    # Whole identities stay on one rank when the per-rank batch is a multiple of K.
    if 32 // world_size % 4 == 0:
        for s in slices:
            blocks = labels[s.reshape(-1, 4)]
            assert (blocks == blocks[:, :1]).all()


def test_rank_slice_errors():
    batch = np.arange(12).reshape(2, 6)
    with pytest.raises(ValueError, match="batch size 6 is not divisible by the world size 4"):
        rank_slice(batch, 0, 4)
    with pytest.raises(ValueError, match="rank 3"):
        rank_slice(batch, 3, 3)


def test_blocks_follow_anchor_other_camera_same_camera_rule():
    labels, cams = _random_labels(num_images=900, num_ids=120, num_cams=3, seed=4)
    k = 4
    plan = IdentitySampler(labels, cams, 64, k, seed=0).plan(2, 40)
    blocks = plan.indices.reshape(-1, k)  # no singletons, batch % K == 0: blocks are aligned
    for block in blocks:
        _check_block(block, labels, cams, k)
    # The preference for other cameras is real: most non-anchor picks leave the anchor's camera.
    other_cam = (cams[blocks[:, 1:]] != cams[blocks[:, :1]]).mean()
    assert other_cam > 0.9


def test_same_camera_fill_and_replacement_for_small_identities():
    # Identity 0: cameras [0, 0, 0, 1]; identity 1: two images; identity 2: plenty of images.
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2])
    cams = np.array([0, 0, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5])
    plan = IdentitySampler(labels, cams, 12, 4, seed=0).plan(0, 50)
    blocks = plan.indices.reshape(-1, 4)
    seen_anchors = Counter()
    for block in blocks:
        _check_block(block, labels, cams, 4)
        seen_anchors[int(block[0])] += 1
        if labels[block[0]] == 0:
            assert sorted(block.tolist()) == [0, 1, 2, 3]
            if block[0] != 3:
                assert block[1] == 3  # the only other-camera image comes first
        if labels[block[0]] == 1:
            assert set(block.tolist()) == {4, 5}
    assert set(seen_anchors) == set(range(12)), "every image should serve as an anchor sometimes"


def test_every_pass_visits_each_identity_once_and_singletons_contribute_one_image():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 4, 5, 5, 5, 5, 5])  # 2, 3, 4 are singletons
    cams = np.arange(labels.size) % 3
    pass_len = 3 * 4 + 3
    for num_passes in (1, 3):
        plan = IdentitySampler(labels, cams, pass_len, 4, seed=9).plan(0, num_passes)
        counts = Counter(labels[plan.indices.reshape(-1)].tolist())
        assert counts == {0: 4 * num_passes, 1: 4 * num_passes, 5: 4 * num_passes,
                          2: num_passes, 3: num_passes, 4: num_passes}
    orders = [tuple(dict.fromkeys(labels[row].tolist())) for row in plan.indices]
    assert len(set(orders)) > 1, "identity order should be reshuffled every pass"


def test_excluded_images_are_never_sampled():
    labels, cams = _random_labels()
    labels = labels.copy()
    labels[::3] = -1
    plan = IdentitySampler(labels, cams, 32, 4, seed=0).plan(0, 30)
    assert (labels[plan.indices] >= 0).all()
    assert not set(np.flatnonzero(labels < 0).tolist()) & set(plan.indices.reshape(-1).tolist())


@pytest.mark.parametrize("camids", [None, "all_unknown"])
def test_unknown_cameras_sample_distinct_images(camids):
    labels, _ = _random_labels()
    cams = None if camids is None else np.full(labels.size, -1)
    plan = IdentitySampler(labels, cams, 32, 4, seed=3).plan(0, 20)
    for block in plan.indices.reshape(-1, 4):
        _check_block(block, labels, np.zeros_like(labels), 4)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="no image has a pseudo label"):
        IdentitySampler(np.full(5, -1), None, 8, 4, 0)
    with pytest.raises(ValueError, match="camids has shape"):
        IdentitySampler(np.zeros(5), np.zeros(4), 8, 4, 0)
    with pytest.raises(ValueError, match="num_instances=0"):
        IdentitySampler(np.zeros(5), None, 8, 0, 0)


def test_picks_are_uniform_over_the_identity():
    labels, cams = np.zeros(10, dtype=np.int64), np.arange(10)
    plan = IdentitySampler(labels, cams, 40, 4, seed=11).plan(0, 200)  # 2000 blocks of one identity
    blocks = plan.indices.reshape(-1, 4)
    anchors = np.bincount(blocks[:, 0], minlength=10)
    picks = np.bincount(blocks[:, 1:].reshape(-1), minlength=10)
    assert np.abs(anchors / 2000 - 0.1).max() < 0.025
    assert np.abs(picks / 6000 - 0.1).max() < 0.015
    assert all(len(set(b)) == 4 for b in blocks.tolist())


def test_rank_plan_holds_the_sampler_plan_and_this_ranks_share():
    labels, cams = _random_labels()
    sampled = IdentitySampler(labels, cams, 32, 4, seed=2).plan(1, 5)
    for rank in range(4):
        plan = plan_epoch(labels, cams, epoch=1, num_iters=5, batch_size=32, num_instances=4, seed=2,
                          num_clusters=80, rank=rank, world_size=4)
        np.testing.assert_array_equal(plan.indices, sampled.indices)
        np.testing.assert_array_equal(plan.aug_seeds, sampled.aug_seeds)
        np.testing.assert_array_equal(plan.indices_dev.numpy(), sampled.indices)
        np.testing.assert_array_equal(plan.local_indices, rank_slice(sampled.indices, rank, 4))
        np.testing.assert_array_equal(plan.local_seeds, rank_slice(sampled.aug_seeds, rank, 4))
        assert plan.local_columns == slice(8 * rank, 8 * rank + 8) and plan.num_iters == 5
    repeats = [max(Counter(row).values()) for row in sampled.indices.tolist()]
    assert plan.max_repeats.tolist() == repeats
    top = int(labels[sampled.indices].max())  # a planned label that is one too large for top clusters
    with pytest.raises(ValueError, match=rf"outside \[0, {top}\)"):
        plan_epoch(labels, cams, epoch=1, num_iters=5, batch_size=32, num_instances=4, seed=2, num_clusters=top)
    with pytest.raises(ValueError, match="not divisible"):
        EpochPlan.build(sampled, 0, 3)


def test_batch_order_check_names_the_plan():
    check_batch_order(torch.tensor([4, 2]), np.array([4, 2]))
    with pytest.raises(RuntimeError, match="epoch plan"):
        check_batch_order(torch.tensor([2, 4]), np.array([4, 2]))


def test_an_epoch_without_any_labelled_image_is_a_user_error_saying_what_to_change():
    from cacl_dist.errors import UserError

    with pytest.raises(UserError, match="clustering.outliers=singleton") as info:
        IdentitySampler(np.full(12, -1), None, batch_size=8, num_instances=4, seed=0)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError) as info:  # a bad argument stays a plain ValueError: a bug of the caller
        IdentitySampler(np.zeros((2, 2)), None, batch_size=8, num_instances=4, seed=0)
    assert not isinstance(info.value, UserError)
