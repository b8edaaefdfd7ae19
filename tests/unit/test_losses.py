"""Unit tests for cacl_dist.losses: hand-computed values, masking, and gradient routing."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cacl_dist.losses import cacl_loss, instance_loss, inter_view_loss, intra_view_loss
from cacl_dist.models import CACLModel

from tests.helpers.losses import loss_floats


def test_instance_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x_gray = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # cos = 1/sqrt(2) and -1 -> loss = -(1/sqrt(2) - 1) / 2
    expected = -(1 / math.sqrt(2) - 1.0) / 2
    assert instance_loss(z, x_gray).item() == pytest.approx(expected, abs=1e-6)


def test_inter_view_loss_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    centres_gray = torch.tensor([[0.5, 0.0], [3.0, 4.0]])
    labels = torch.tensor([1, 1, 0])
    # cos(z0, (3,4)) = 0.6, cos(z1, (3,4)) = 0.8, cos(z2, (0.5,0)) = 1
    expected = -(0.6 + 0.8 + 1.0) / 3
    assert inter_view_loss(z, centres_gray, labels).item() == pytest.approx(expected, abs=1e-6)


def test_intra_view_loss_by_hand():
    feats = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    labels = torch.tensor([0, 2])
    tau, gamma = 0.5, 2.0
    total = 0.0
    for i in range(2):
        sims = [sum(feats[i, d].item() * centres[m, d].item() for d in range(2)) / tau for m in range(3)]
        q = math.exp(sims[labels[i]]) / sum(math.exp(s) for s in sims)
        total += -((1 - q) ** gamma) * math.log(q)
    got = intra_view_loss(feats, centres, labels, tau=tau, gamma=gamma)
    assert got.item() == pytest.approx(total / 2, rel=1e-5)


def test_focal_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(6, 5), dim=1)
    centres = torch.randn(4, 5)
    labels = torch.tensor([0, 1, 2, 3, 1, 0])
    expected = F.cross_entropy(feats @ centres.t() / 0.05, labels)
    got = intra_view_loss(feats, centres, labels, tau=0.05, gamma=0.0)
    assert torch.allclose(got, expected, atol=1e-5)
    assert intra_view_loss(feats, centres, labels, tau=0.05, gamma=2.0) < got


def test_masked_clusters_are_ignored():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(5, 4), dim=1)
    centres = torch.randn(3, 4)
    labels = torch.tensor([0, 2, 2, 0, 0])
    valid = torch.tensor([True, False, True])
    masked = intra_view_loss(feats, centres, labels, valid_M=valid)
    without_cluster = intra_view_loss(feats, centres[[0, 2]], torch.tensor([0, 1, 1, 0, 0]))
    assert torch.allclose(masked, without_cluster, atol=1e-6)
    # The masked centre's values must not matter at all.
    centres_changed = centres.clone()
    centres_changed[1] = 100.0
    assert torch.allclose(intra_view_loss(feats, centres_changed, labels, valid_M=valid), masked, atol=1e-6)
    unmasked = intra_view_loss(feats, centres, labels)
    assert not torch.allclose(unmasked, masked)


def test_sample_in_empty_cluster_rejected():
    feats = F.normalize(torch.randn(2, 4), dim=1)
    with pytest.raises(ValueError, match="empty"):
        intra_view_loss(feats, torch.randn(3, 4), torch.tensor([0, 1]), valid_M=torch.tensor([True, False, True]))


@pytest.mark.parametrize("bad_labels", [[0, 3], [-1, 0]])
def test_labels_out_of_range_rejected(bad_labels):
    feats = F.normalize(torch.randn(2, 4), dim=1)
    centres = torch.randn(3, 4)
    labels = torch.tensor(bad_labels)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cacl_loss(feats, feats, feats, labels, centres, centres)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        inter_view_loss(feats, centres, labels)


def test_bad_shapes_and_parameters_rejected():
    feats = torch.randn(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        instance_loss(feats, torch.randn(3, 4))
    with pytest.raises(ValueError, match="same D"):
        intra_view_loss(feats, torch.randn(3, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="tau"):
        intra_view_loss(feats, torch.randn(3, 4), torch.tensor([0, 1]), tau=0.0)


def test_cacl_loss_total_is_sum_of_parts():
    torch.manual_seed(0)
    x, z, x_gray = (F.normalize(torch.randn(6, 8), dim=1) for _ in range(3))
    centres, centres_gray = torch.randn(4, 8), torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    parts = cacl_loss(x, z, x_gray, labels, centres, centres_gray, tau=0.1, gamma=4.0)
    assert torch.allclose(parts.total, parts.instance + parts.inter + parts.intra_rgb + parts.intra_gray)
    assert torch.allclose(parts.instance, instance_loss(z, x_gray))
    assert torch.allclose(parts.inter, inter_view_loss(z, centres_gray, labels))
    assert torch.allclose(parts.intra_rgb, intra_view_loss(x, centres, labels, tau=0.1, gamma=4.0))
    assert torch.allclose(parts.intra_gray, intra_view_loss(x_gray, centres_gray, labels, tau=0.1, gamma=4.0))
    assert set(loss_floats(parts)) == {"total", "instance", "inter", "intra_rgb", "intra_gray"}


def test_loss_weights_scale_the_total_and_keep_the_parts():
    torch.manual_seed(1)
    x, z, x_gray = (F.normalize(torch.randn(6, 8), dim=1) for _ in range(3))
    centres, centres_gray = torch.randn(4, 8), torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    full = cacl_loss(x, z, x_gray, labels, centres, centres_gray)
    weighted = cacl_loss(x, z, x_gray, labels, centres, centres_gray,
                         instance_weight=0.0, inter_weight=2.0, intra_gray_weight=0.5)
    for name in ("instance", "inter", "intra_rgb", "intra_gray"):
        assert torch.equal(getattr(weighted, name), getattr(full, name)), name
    assert torch.allclose(weighted.total, 2.0 * full.inter + full.intra_rgb + 0.5 * full.intra_gray)


def test_single_branch_weights_leave_only_branch_one_cluster_loss():
    """All three weights at 0: the total's gradient is intra(x, u)'s, branch 2 and the predictor get zeros."""
    torch.manual_seed(0)
    model = CACLModel("resnet_tiny")
    model.train()
    images_rgb, images_gray = torch.randn(8, 3, 64, 32), torch.randn(8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    centres, centres_gray = F.normalize(torch.randn(4, 128), dim=1), F.normalize(torch.randn(4, 128), dim=1)
    x, z, x_gray = model(images_rgb, images_gray)
    parts = cacl_loss(x, z, x_gray, labels, centres, centres_gray,
                      instance_weight=0.0, inter_weight=0.0, intra_gray_weight=0.0)
    parts.total.backward()
    total_grads = [None if p.grad is None else p.grad.clone() for p in model.online.branch.parameters()]
    assert _grad_norms(model.branch_gray) == 0.0 and _grad_norms(model.online.predictor) == 0.0
    assert any(p.grad is not None for p in model.branch_gray.parameters())  # in the graph, zero gradient
    model.zero_grad(set_to_none=True)
    x, z, x_gray = model(images_rgb, images_gray)
    cacl_loss(x, z, x_gray, labels, centres, centres_gray).intra_rgb.backward()
    want_grads = [p.grad for p in model.online.branch.parameters()]
    assert sum(g is not None for g in want_grads) > 0
    for got, want in zip(total_grads, want_grads):
        assert (got is None) == (want is None)
        assert got is None or torch.allclose(got, want, atol=1e-6)


def _grad_norms(module: torch.nn.Module) -> float:
    return sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)


def test_gradient_routing_through_cacl_model():
    """Branch F' learns only from intra(x~); the online network never from intra(x~)."""
    torch.manual_seed(0)
    model = CACLModel("resnet_tiny")
    model.train()
    images_rgb, images_gray = torch.randn(8, 3, 64, 32), torch.randn(8, 3, 64, 32)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    # Centres built from parameters-free tensors but with requires_grad, to prove the detach.
    centres = F.normalize(torch.randn(5, 128), dim=1).requires_grad_(True)
    centres_gray = F.normalize(torch.randn(5, 128), dim=1).requires_grad_(True)
    centres_before = centres.detach().clone(), centres_gray.detach().clone()
    valid = torch.tensor([True, True, True, True, False])

    norms = {}
    for part in ("instance", "inter", "intra_rgb", "intra_gray", "total"):
        model.zero_grad(set_to_none=True)
        x, z, x_gray = model(images_rgb, images_gray)
        parts = cacl_loss(x, z, x_gray, labels, centres, centres_gray, valid_M=valid)
        getattr(parts, part).backward()
        norms[part] = {
            "gray": _grad_norms(model.branch_gray),
            "branch": _grad_norms(model.online.branch),
            "predictor": _grad_norms(model.online.predictor),
        }
        assert centres.grad is None and centres_gray.grad is None

    for part in ("instance", "inter", "intra_rgb"):
        assert norms[part]["gray"] == 0.0, part
        assert norms[part]["branch"] > 0.0, part
    assert norms["instance"]["predictor"] > 0.0 and norms["inter"]["predictor"] > 0.0
    assert norms["intra_rgb"]["predictor"] == 0.0
    assert norms["intra_gray"]["gray"] > 0.0
    assert norms["intra_gray"]["branch"] == 0.0 and norms["intra_gray"]["predictor"] == 0.0
    assert norms["total"]["gray"] == pytest.approx(norms["intra_gray"]["gray"], rel=1e-5)
    assert torch.equal(centres.detach(), centres_before[0]) and torch.equal(centres_gray.detach(), centres_before[1])


def test_half_precision_inputs_computed_in_float32():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(4, 8), dim=1)
    centres = torch.randn(3, 8)
    labels = torch.tensor([0, 1, 2, 0])
    full = intra_view_loss(feats, centres, labels)
    half = intra_view_loss(feats.half(), centres.half(), labels)
    assert half.dtype == torch.float32
    assert torch.allclose(full, half, rtol=2e-2)
