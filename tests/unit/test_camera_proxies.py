"""Camera-aware proxy losses against plain loops over samples, cameras and proxies (CAP's form)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cacl_dist.camera_proxies import camera_proxy_loss, camera_sample_weights, proxy_layout


def _problem(seed: int, num: int = 60, clusters: int = 7, cameras: int = 3, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, clusters, (num,), generator=g)
    labels[:clusters] = torch.arange(clusters)  # every cluster present
    cams = torch.randint(0, cameras, (num,), generator=g)
    bank = F.normalize(torch.randn(num, dim, generator=g, dtype=torch.float64), dim=1)
    return labels, cams, bank


def _loop_proxies(labels, cams, bank):
    """{(cluster, camera): mean of its bank rows}, by a loop."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for i in range(len(labels)):
        if labels[i] >= 0:
            groups.setdefault((int(labels[i]), int(cams[i])), []).append(bank[i])
    return {key: torch.stack(rows).mean(0) for key, rows in groups.items()}


def _loop_loss(feats, batch_labels, batch_cams, proxies, tau, k, with_inter=True):
    """CAP: sum over the cameras of the batch of the mean over their samples (intra; inter likewise)."""
    intra = inter = 0.0
    for cam in sorted(set(batch_cams.tolist())):
        members = [i for i in range(len(batch_cams)) if batch_cams[i] == cam]
        intra_c = inter_c = 0.0
        for i in members:
            y, x = int(batch_labels[i]), feats[i].double()
            own = [key for key in proxies if key[1] == cam]
            num = math.exp(float(x @ proxies[(y, cam)]) / tau)
            den = sum(math.exp(float(x @ proxies[key]) / tau) for key in own)
            intra_c += -math.log(num / den)
            positives = [key for key in proxies if key[0] == y]
            negatives = sorted((key for key in proxies if key[0] != y), key=lambda key: float(x @ proxies[key]),
                               reverse=True)[:k]
            den = sum(math.exp(float(x @ proxies[key]) / tau) for key in positives + negatives)
            inter_c += -sum(math.log(math.exp(float(x @ proxies[key]) / tau) / den) for key in positives) / len(positives)
        intra += intra_c / len(members)
        inter += inter_c / len(members)
    return intra, (inter if with_inter else 0.0)


@pytest.mark.parametrize("seed,k", [(0, 50), (1, 3), (2, 0)])
def test_losses_match_plain_loops(seed, k):
    labels, cams, bank = _problem(seed)
    layout = proxy_layout(labels, cams)
    proxies = _loop_proxies(labels, cams, bank)
    assert layout.num_proxies == len(proxies)
    sums = torch.zeros(layout.num_proxies, bank.shape[1], dtype=torch.float64)
    keep = layout.proxy_of_N >= 0
    sums.index_add_(0, layout.proxy_of_N[keep], bank[keep])
    table = sums / torch.bincount(layout.proxy_of_N[keep], minlength=layout.num_proxies)[:, None]
    for p in range(layout.num_proxies):
        torch.testing.assert_close(table[p], proxies[(int(layout.cluster_P[p]), int(layout.camera_P[p]))])
    batch = torch.nonzero(labels >= 0).squeeze(1)[:24]
    g = torch.Generator().manual_seed(10 + seed)
    feats = F.normalize(torch.randn(len(batch), bank.shape[1], generator=g), dim=1)
    weights = camera_sample_weights(cams[batch], slice(0, len(batch)))
    parts = camera_proxy_loss(feats, table.float(), layout, labels[batch], layout.proxy_of_N[batch], cams[batch],
                              weights, tau=0.07, hard_negatives=k)
    intra, inter = _loop_loss(feats, labels[batch], cams[batch], proxies, 0.07, k)
    assert parts.intra.item() == pytest.approx(intra, rel=1e-4)
    assert parts.inter.item() == pytest.approx(inter, rel=1e-4)
    off = camera_proxy_loss(feats, table.float(), layout, labels[batch], layout.proxy_of_N[batch], cams[batch],
                            weights, tau=0.07, hard_negatives=k, with_inter=False)
    assert off.inter.item() == 0.0 and off.intra.item() == pytest.approx(intra, rel=1e-4)


def test_rank_shares_sum_to_the_one_process_value():
    """The mean over ranks of the weighted local sums (what DDP averages) is the whole batch's value."""
    labels, cams, bank = _problem(3)
    layout = proxy_layout(labels, cams)
    sums = torch.zeros(layout.num_proxies, bank.shape[1], dtype=torch.float64)
    keep = layout.proxy_of_N >= 0
    sums.index_add_(0, layout.proxy_of_N[keep], bank[keep])
    table = (sums / torch.bincount(layout.proxy_of_N[keep])[:, None]).float()
    batch = torch.nonzero(labels >= 0).squeeze(1)[:24]
    feats = F.normalize(torch.randn(len(batch), bank.shape[1], generator=torch.Generator().manual_seed(4)), dim=1)
    feats.requires_grad_(True)

    def share(cols):
        weights = camera_sample_weights(cams[batch], cols)
        p = camera_proxy_loss(feats[cols], table, layout, labels[batch][cols], layout.proxy_of_N[batch][cols],
                              cams[batch][cols], weights, hard_negatives=5)
        return p.intra + 0.5 * p.inter

    whole = share(slice(0, 24))
    (grad_whole,) = torch.autograd.grad(whole, feats)
    halves = [share(slice(0, 12)), share(slice(12, 24))]
    mean = (halves[0] + halves[1]) / 2
    (grad_mean,) = torch.autograd.grad(mean, feats)
    torch.testing.assert_close(mean, whole)
    torch.testing.assert_close(grad_mean, grad_whole)


def test_layout_skips_outliers_and_unknown_cameras():
    labels = torch.tensor([0, 0, 1, -1, 1, 2])
    cams = torch.tensor([1, 0, 1, 0, -1, 0])
    layout = proxy_layout(labels, cams)
    # pairs (cluster, camera): (0,0) (2,0) (0,1) (1,1), numbered camera by camera
    assert layout.cluster_P.tolist() == [0, 2, 0, 1]
    assert layout.camera_P.tolist() == [0, 0, 1, 1]
    assert layout.proxy_of_N.tolist() == [2, 0, 3, -1, -1, 1]


@pytest.mark.parametrize("override, needle", [
    ("loss.camera_proxy_weight=-1", "must not be negative"),
    ("loss.camera_proxy_temperature=0", "must be positive"),
    ("loss.camera_proxy_hard_negatives=-5", "must not be negative"),
    ("loss.camera_proxy_inter_weight=-0.5", "must not be negative"),
    ("loss.camera_proxy_inter_from_epoch=-1", "must not be negative"),
])
def test_settings_are_checked_where_the_config_is_read(override, needle):
    from cacl_dist.config import load_config
    from cacl_dist.errors import ConfigError

    with pytest.raises(ConfigError, match=needle) as info:
        load_config(None, [override])
    assert override.split("=")[0] in str(info.value) and "\n" not in str(info.value)
    cfg = load_config(None, [])
    assert cfg.loss.camera_proxy_weight == 0.0  # off unless asked for
    assert (cfg.loss.camera_proxy_temperature, cfg.loss.camera_proxy_hard_negatives,
            cfg.loss.camera_proxy_inter_weight, cfg.loss.camera_proxy_inter_from_epoch) == (0.07, 50, 0.5, 5)  # CAP


def test_images_of_unknown_camera_are_one_line():
    from cacl_dist.config import load_config
    from cacl_dist.errors import UserError
    from cacl_dist.training.banks import MemoryBanks
    from cacl_dist.training.proxies import CameraProxies

    cfg = load_config(None, ["loss.camera_proxy_weight=1"])
    banks = MemoryBanks(3, 4, (0, 3), "cpu")
    with pytest.raises(UserError, match="loss.camera_proxy_weight") as info:
        CameraProxies(cfg.loss, [0, -1, 1], banks, "cpu", "folder")
    assert "\n" not in str(info.value)
    CameraProxies(cfg.loss, [0, 2, 1], banks, "cpu")


@pytest.mark.gpu
def test_cuda_layout_weights_and_losses_equal_the_cpu():
    labels, cams, bank = _problem(5)
    batch = torch.nonzero(labels >= 0).squeeze(1)[:24]
    feats = F.normalize(torch.randn(len(batch), bank.shape[1], generator=torch.Generator().manual_seed(6)), dim=1)
    results = []
    for device in ("cpu", "cuda"):
        layout = proxy_layout(labels.to(device), cams.to(device))
        keep = layout.proxy_of_N >= 0
        sums = torch.zeros(layout.num_proxies, bank.shape[1], dtype=torch.float64, device=device)
        sums.index_add_(0, layout.proxy_of_N[keep], bank.to(device)[keep])
        table = (sums / torch.bincount(layout.proxy_of_N[keep])[:, None]).float()
        x = feats.to(device).requires_grad_(True)
        b = batch.to(device)
        weights = camera_sample_weights(cams.to(device)[b], slice(6, 18))
        parts = camera_proxy_loss(x[6:18], table, layout, labels.to(device)[b][6:18], layout.proxy_of_N[b][6:18],
                                  cams.to(device)[b][6:18], weights, hard_negatives=4)
        (grad,) = torch.autograd.grad(parts.intra + parts.inter, x)
        results.append((layout.proxy_of_N.cpu(), parts.intra.detach().cpu(), parts.inter.detach().cpu(), grad.cpu()))
    (p0, i0, e0, g0), (p1, i1, e1, g1) = results
    assert torch.equal(p0, p1)
    torch.testing.assert_close(i1, i0)
    torch.testing.assert_close(e1, e0)
    torch.testing.assert_close(g1, g0)
