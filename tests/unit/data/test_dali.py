"""The DALI pipeline (CPU-only here): same semantics as torchvision, rates, determinism, errors."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("nvidia.dali", reason="not applicable here: optional extra NVIDIA DALI (.[dali]) not installed")

from cacl_dist.data.epoch_plan import EpochPlan  # noqa: E402
from cacl_dist.data.layouts import ImageRecord  # noqa: E402
from cacl_dist.data.pipelines import dali as dp  # noqa: E402
from cacl_dist.data.pipelines.torchvision import eval_loader as build_tv_eval_loader  # noqa: E402
from cacl_dist.data.sampler import GlobalBatches  # noqa: E402
from cacl_dist.data.transforms import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    AugmentParams,
    apply_view,
    load_image,
    to_gray,
    two_views,
)
from cacl_dist.data.view_params import draw_view_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # one uint8 level after normalisation, at most
SIZES = [(32, 16), (20, 10), (50, 23), (64, 32), (33, 17), (16, 8)]  # exact, up- and downscaled to 32 x 16


def _write_images(folder: Path, sizes, seed: int = 0) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    records = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([127 + 100 * np.sin(yy / 3 + i) * np.cos(xx / 4), 127 + 100 * np.cos(yy / 5 + xx / 3),
                           rng.integers(0, 256, (h, w))], axis=-1).clip(0, 255).astype(np.uint8)
        path = folder / f"img{i}.png"  # lossless, so both decoders see the same pixels
        Image.fromarray(pixels).save(path)
        records.append(ImageRecord(path=str(path), pid=i, camid=0))
    return records


def _plan(indices: np.ndarray, seed: int = 0) -> EpochPlan:
    indices = np.atleast_2d(indices).astype(np.int64)
    seeds = np.random.default_rng(seed).integers(0, 2**62, indices.shape)
    return EpochPlan.build(GlobalBatches(indices=indices, aug_seeds=seeds), 0, 1)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def test_without_randomness_dali_matches_torchvision(tmp_path):
    records = _write_images(tmp_path, SIZES)
    params = AugmentParams(height=32, width=16, flip_p=0.0, pad=0, erase_p=0.0)
    plan = _plan(np.arange(len(records)))
    view_rgb, view_gray, index = next(iter(dp.train_loader(records, params, plan, num_workers=1)))
    assert view_rgb.shape == view_gray.shape == (6, 3, 32, 16) and view_rgb.dtype == torch.float32
    assert index.tolist() == list(range(6)) and index.dtype == torch.int64
    for i, (h, w) in enumerate(SIZES):
        ref_rgb, ref_gray = two_views(load_image(records[i].path), params, int(plan.aug_seeds[0, i]))
        err_rgb, err_gray = (view_rgb[i] - ref_rgb).abs(), (view_gray[i] - ref_gray).abs()
        if h <= 32:  # same size or upscaled: the same bilinear weights; gray differs by DALI's uint8 luma
            assert err_rgb.max() < 1e-5 and err_gray.max() < 0.51 * LEVEL + 1e-5
        else:  # downscaled: both antialias, with slightly different filters at the borders
            assert err_rgb.mean() < 0.6 * LEVEL and err_rgb.max() < 16 * LEVEL
            assert err_gray.mean() < 0.8 * LEVEL


def test_random_views_apply_their_choices_exactly(tmp_path):
    records = _write_images(tmp_path, [(32, 16)] * 4)
    params = AugmentParams(height=32, width=16, pad=4)
    plan = _plan(np.tile(np.arange(4), 4).reshape(2, 8), seed=5)
    batches = list(dp.train_loader(records, params, plan, num_workers=1))
    assert len(batches) == 2
    for it, (view_rgb, view_gray, index) in enumerate(batches):
        for view, out in ((0, view_rgb), (1, view_gray)):
            choice = draw_view_batch(params, plan.aug_seeds[it], view)
            for i in range(8):
                ref = apply_view(load_image(records[int(index[i])].path), params, choice.view(i), gray=view == 1)
                tol = 1e-5 if view == 0 else 0.51 * LEVEL + 1e-5
                torch.testing.assert_close(out[i], ref, atol=tol, rtol=0)


def test_gray_view_is_bt601_luma_in_three_equal_channels(tmp_path):
    records = _write_images(tmp_path, [(32, 16)])
    params = AugmentParams(height=32, width=16, flip_p=0.0, pad=0, erase_p=0.0)
    _, view_gray, _ = next(iter(dp.train_loader(records, params, _plan(np.zeros(3)), num_workers=1)))
    plain = _unnormalise(view_gray[0])
    assert torch.allclose(plain[0], plain[1], atol=1e-5) and torch.allclose(plain[0], plain[2], atol=1e-5)
    luma = to_gray(load_image(records[0].path).float() / 255.0)[0]
    assert (plain[0] - luma).abs().max() <= 0.5 / 255 + 1e-5  # DALI rounds the luma to uint8


def _decode_choices(view: torch.Tensor, height: int, width: int, pad: int):
    """(flip, top, left, erased) of an RGB view of the coordinate image made by test_rates below."""
    pixels = (_unnormalise(view) * 255).round()
    red, green, blue = pixels
    real = (blue - 200).abs() < 1.5
    erased = bool(((blue - 0.406 * 255).abs() < 1.5).any())
    y = int(real.sum(dim=1).argmax())  # the row with most image pixels (not padding, not erased)
    xs = torch.nonzero(real[y]).flatten()
    x, x2 = int(xs[0]), int(xs[-1])
    assert x2 > x, "too few image pixels left to tell the flip"
    src_y, src_x = int(red[y, x]) // 8, int(green[y, x]) // 16
    flip = int(green[y, x2]) < int(green[y, x])  # source columns run backwards
    top = src_y - y + pad
    left = (width - 1 - src_x) - x + pad if flip else src_x - x + pad
    return flip, top, left, erased


def test_rates_of_flip_crop_and_erasing(tmp_path):
    height, width, pad = 32, 16, 4
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([8 * yy, 16 * xx, np.full_like(yy, 200)], axis=-1).astype(np.uint8)  # pixel = its position
    Image.fromarray(pixels).save(tmp_path / "coords.png")
    records = [ImageRecord(path=str(tmp_path / "coords.png"), pid=0, camid=0)]
    params = AugmentParams(height=height, width=width, pad=pad, gray_second_view=False)
    iters, batch = 16, 32
    plan = _plan(np.zeros((iters, batch)), seed=11)
    found = {0: [], 1: []}
    for it, (view_1, view_2, _) in enumerate(dp.train_loader(records, params, plan, num_workers=2)):
        for view, out in ((0, view_1), (1, view_2)):
            choice = draw_view_batch(params, plan.aug_seeds[it], view)
            for i in range(batch):
                got = _decode_choices(out[i], height, width, pad)
                assert got == (bool(choice.flip[i]), int(choice.top[i]), int(choice.left[i]),
                               bool(choice.erase[i, 2] > 0))
                found[view].append(got)
    n = 2 * iters * batch  # 1024 views: a rate of 0.5 has std 0.016, the bounds below are 5 sigma
    flips = np.array([f[0] for v in found.values() for f in v])
    erased = np.array([f[3] for v in found.values() for f in v])
    assert abs(flips.mean() - 0.5) < 0.08 and abs(erased.mean() - 0.5) < 0.08
    for k in (1, 2):
        counts = np.bincount([f[k] for v in found.values() for f in v], minlength=2 * pad + 1)
        assert counts.size == 2 * pad + 1 and np.all(np.abs(counts - n / 9) < 55)  # std ~10
    same_flip = np.mean([a[0] == b[0] for a, b in zip(found[0], found[1])])
    assert abs(same_flip - 0.5) < 0.12  # the two views flip independently (512 pairs, 5 sigma)


def test_loader_is_deterministic_and_resumes_mid_epoch(tmp_path):
    records = _write_images(tmp_path, SIZES)
    params = AugmentParams(height=32, width=16, pad=4)
    plan = _plan((np.arange(18) % 6).reshape(3, 6), seed=3)
    loader = dp.train_loader(records, params, plan, num_workers=2)
    first, second = list(loader), list(loader)
    assert len(loader) == 3 and len(first) == 3
    for a, b in zip(first, second):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = list(dp.train_loader(records, params, plan, start_iter=2, num_workers=1))
    assert len(resumed) == 1 and all(torch.equal(x, y) for x, y in zip(resumed[0], first[2]))


def test_eval_loader_matches_torchvision_in_order(tmp_path):
    records = _write_images(tmp_path, SIZES + [(32, 16)])
    dali_batches = list(dp.eval_loader(records, 32, 16, batch_size=3, num_workers=1, start=1, end=7))
    tv_batches = list(build_tv_eval_loader(records, 32, 16, batch_size=3, start=1, end=7))
    assert [b[1].tolist() for b in dali_batches] == [[1, 2, 3], [4, 5, 6]]
    dali_images, tv_images = torch.cat([b[0] for b in dali_batches]), torch.cat([b[0] for b in tv_batches])
    assert dali_images.shape == tv_images.shape == (6, 3, 32, 16)
    assert (dali_images - tv_images).abs().mean() < 0.6 * LEVEL
    gray = next(iter(dp.eval_loader(records, 32, 16, batch_size=2, num_workers=1, gray=True)))[0]
    tv_gray = next(iter(build_tv_eval_loader(records, 32, 16, batch_size=2, gray=True)))[0]
    assert (gray[0] - tv_gray[0]).abs().max() < 0.51 * LEVEL + 1e-5
    assert list(dp.eval_loader(records, 32, 16, batch_size=4, start=3, end=3)) == []


def test_extraction_through_dali_gives_the_same_features(tmp_path):
    from cacl_dist.evaluation.extract import ExtractionSettings, extract_shard
    from cacl_dist.models.cacl import Branch

    records = _write_images(tmp_path, [(32, 16), (20, 10), (16, 8), (32, 16)], seed=4)
    torch.manual_seed(0)
    branch = Branch("resnet_tiny").eval()
    common = dict(height=32, width=16, batch_size=3, num_workers=0, device=torch.device("cpu"))
    tv = extract_shard(branch, records, 0, 4, ExtractionSettings(**common))
    dali = extract_shard(branch, records, 0, 4, ExtractionSettings(pipeline="dali", **common))
    torch.testing.assert_close(dali, tv, atol=1e-4, rtol=1e-4)  # upscaled and exact sizes: same pixels
    with pytest.raises(ValueError, match="extraction pipeline"):
        extract_shard(branch, records, 0, 4, ExtractionSettings(pipeline="opencv", **common))


def test_unreadable_image_is_named_and_never_hangs(tmp_path):
    """A truncated JPEG in the batch: a clear error naming it, from a subprocess that must finish."""
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((64, 32, 3), 120, np.uint8)).save(good, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    script = textwrap.dedent(f"""
        import numpy as np
        from cacl_dist.data.layouts import ImageRecord
        from cacl_dist.data.pipelines import dali as dp
        from cacl_dist.data.epoch_plan import EpochPlan
        from cacl_dist.data.sampler import GlobalBatches
        from cacl_dist.data.transforms import AugmentParams
        records = [ImageRecord(path={str(good)!r}, pid=0, camid=0), ImageRecord(path={str(bad)!r}, pid=0, camid=0)]
        plan = EpochPlan.build(GlobalBatches(indices=np.array([[0, 0], [0, 1], [0, 0]]),
                                        aug_seeds=np.zeros((3, 2), np.int64)), 0, 1)
        for loader in (dp.train_loader(records, AugmentParams(height=32, width=16), plan),
                       dp.eval_loader(records, 32, 16, batch_size=2)):
            try:
                list(loader)
            except ValueError as err:
                print("ERROR:", err)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, result.stdout + result.stderr
    assert all(str(bad) in line and "truncated" in line for line in errors)


@pytest.mark.parametrize("kind", ["random bytes", "header only"])
def test_image_dali_cannot_parse_is_named_instead_of_a_crash(tmp_path, kind):
    """Unchecked, DALI ends the process (SIGSEGV) on such a file in a batch of 32 or more."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(40):
        path = tmp_path / f"img{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(path, quality=90)
        records.append(ImageRecord(path=str(path), pid=0, camid=0))
    bad = tmp_path / "img7.jpg"
    bad.write_bytes(rng.bytes(3000) if kind == "random bytes" else (tmp_path / "img8.jpg").read_bytes()[:600])
    script = textwrap.dedent(f"""
        import numpy as np
        from cacl_dist.data.layouts import ImageRecord
        from cacl_dist.data.pipelines import dali as dp
        from cacl_dist.data.epoch_plan import EpochPlan
        from cacl_dist.data.sampler import GlobalBatches
        from cacl_dist.data.transforms import AugmentParams
        records = [ImageRecord(path=p, pid=0, camid=0) for p in {[r.path for r in records]!r}]
        plan = EpochPlan.build(GlobalBatches(indices=np.arange(40)[None], aug_seeds=np.zeros((1, 40), np.int64)), 0, 1)
        for make in (lambda: dp.eval_loader(records, 32, 16, batch_size=40),
                     lambda: dp.train_loader(records, AugmentParams(height=32, width=16), plan)):
            try:
                list(make())
            except ValueError as err:
                print("ERROR:", err)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2 and all(str(bad) in line for line in errors), result.stdout


def test_batched_erasing_equals_the_per_sample_loop():
    params = AugmentParams(height=32, width=16, erase_p=0.7)
    boxes = draw_view_batch(params, np.arange(40), 0).erase
    views = torch.randn(40, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    looped = dp._erase_(views.clone(), boxes, vectorised=False)
    assert torch.equal(dp._erase_(views.clone(), boxes, vectorised=True), looped)
    assert 0 < int((looped == 0).all(dim=1).flatten(1).any(dim=1).sum()) < 40


def test_device_must_be_cpu_or_cuda(tmp_path):
    records = _write_images(tmp_path, [(32, 16)])
    with pytest.raises(ValueError, match="CUDA or the CPU"):
        dp.eval_loader(records, 32, 16, batch_size=1, device="meta")


def test_luma_normalisation_builds_its_constants_once_per_device(monkeypatch):
    """After the first batch no tensor is made from Python numbers (on CUDA a blocking copy per batch)."""
    luma = torch.rand(2, 1, 4, 3)
    first = dp._normalise_luma(luma)
    assert torch.allclose(first, (luma.expand(-1, 3, -1, -1) - MEAN) / STD, atol=1e-6)

    def no_new_tensors(*args, **kwargs):
        raise AssertionError("torch.tensor called for a batch")

    monkeypatch.setattr(torch, "tensor", no_new_tensors)
    assert torch.equal(dp._normalise_luma(luma), first)


class _RecordingPipe:
    """Stands in for a built DALI pipeline: records the arguments of every run."""

    def __init__(self, runs: list):
        self.runs = runs

    def build(self):
        pass

    def run(self, *args):
        self.runs.append(args)
        return [torch.zeros(1)]


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_outputs_are_bound_to_torchs_current_stream_on_cuda(monkeypatch, device):
    """On a CUDA device the pipeline runs on torch's current stream there (no host wait, buffers
    freed in that stream's order); on the CPU it runs host-synchronously as before."""
    device = torch.device(device)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda dev: ("current stream of", dev))
    monkeypatch.setattr(dp, "_to_torch", lambda output, dev: output)
    runs: list = []
    loader = dp.DaliLoader(lambda source: _RecordingPipe(runs), lambda: None, 3, device,
                           lambda tensors, step, meta: step, lambda i: [])
    assert list(loader) == [0, 1, 2]
    expected = ("current stream of", device) if device.type == "cuda" else None
    assert [args[0] if args else None for args in runs] == [expected] * 3


def test_probe_runs_a_one_sample_pipeline_on_the_cpu():
    dp.probe("cpu")  # raises when DALI cannot run here


@pytest.mark.parametrize("device_id", [None, 0], ids=["cpu-only", "cuda"])
def test_graph_puts_the_pixel_work_on_the_pipeline_device(device_id):
    """The graph is only defined, never built, so the CUDA variant needs no GPU: with a device the
    views come out of GPU operators (mixed decoding upstream), the indices stay on the host."""
    import nvidia.dali as dali

    params = AugmentParams(height=32, width=16, pad=4)
    want = "cpu" if device_id is None else "gpu"
    train = dp._train_pipeline(dali, ["a.jpg"], [0], lambda: None, params, 4, 1, device_id)
    assert [node.device for node in train._graph_out] == [want, want, "cpu"]
    for gray in (False, True):
        evaluation = dp._eval_pipeline(dali, ["a.jpg"], [0], 32, 16, gray, 4, 1, device_id)
        assert [node.device for node in evaluation._graph_out] == [want, "cpu"]


@pytest.mark.gpu
def test_gpu_pipeline_matches_the_cpu_pipeline(tmp_path):
    records = _write_images(tmp_path, SIZES)
    params = AugmentParams(height=32, width=16, pad=4)
    plan = _plan(np.arange(6), seed=2)
    cpu = next(iter(dp.train_loader(records, params, plan, device="cpu")))
    gpu = next(iter(dp.train_loader(records, params, plan, device="cuda:0")))
    assert all(t.device.type == "cuda" for t in gpu)
    for a, b in zip(cpu[:2], gpu[:2]):
        assert (a - b.cpu()).abs().mean() < 0.6 * LEVEL
    assert torch.equal(cpu[2], gpu[2].cpu())


def test_bicubic_resize_matches_torchvision_within_a_grey_level_on_average(tmp_path):
    """DALI's cubic filter and torchvision's antialiased bicubic differ slightly (also when upscaling)."""
    records = _write_images(tmp_path, SIZES)
    params = AugmentParams(height=32, width=16, flip_p=0.0, pad=0, erase_p=0.0, interpolation="bicubic")
    plan = _plan(np.arange(len(records)))
    view_rgb, view_gray, _ = next(iter(dp.train_loader(records, params, plan, num_workers=1)))
    for i, (h, w) in enumerate(SIZES):
        ref_rgb, ref_gray = two_views(load_image(records[i].path), params, int(plan.aug_seeds[0, i]))
        err_rgb, err_gray = (view_rgb[i] - ref_rgb).abs(), (view_gray[i] - ref_gray).abs()
        if (h, w) == (32, 16):  # no resize
            assert err_rgb.max() < 1e-5 and err_gray.max() < 0.51 * LEVEL + 1e-5
        assert err_rgb.mean() < 0.5 * LEVEL and err_rgb.max() < 10 * LEVEL and err_gray.mean() < 0.5 * LEVEL
    bilinear = next(iter(dp.train_loader(records, AugmentParams(height=32, width=16, flip_p=0.0, pad=0, erase_p=0.0),
                                         plan, num_workers=1)))[0]
    assert (bilinear - view_rgb).abs().mean() > 0.5 * LEVEL  # the filter is not ignored
    dali_eval = torch.cat([b[0] for b in dp.eval_loader(records, 32, 16, batch_size=4, interpolation="bicubic")])
    tv_eval = torch.cat([b[0] for b in build_tv_eval_loader(records, 32, 16, batch_size=4, interpolation="bicubic")])
    assert (dali_eval - tv_eval).abs().mean() < 0.5 * LEVEL


@pytest.mark.parametrize("fill", ["zero", "imagenet_mean"])
def test_erasing_fill_is_applied_exactly(tmp_path, fill):
    records = _write_images(tmp_path, [(32, 16)] * 4)
    params = AugmentParams(height=32, width=16, pad=4, erase_p=1.0, erase_fill=fill,
                           erase_ratio=(0.3, 1 / 0.3), erase_ratio_sampling="uniform")
    plan = _plan(np.tile(np.arange(4), 2).reshape(1, 8), seed=9)
    view_rgb, view_gray, index = next(iter(dp.train_loader(records, params, plan, num_workers=1)))
    for view, out in ((0, view_rgb), (1, view_gray)):
        choice = draw_view_batch(params, plan.aug_seeds[0], view)
        assert (choice.erase[:, 2] > 0).all()
        for i in range(8):
            ref = apply_view(load_image(records[int(index[i])].path), params, choice.view(i), gray=view == 1)
            tol = 1e-5 if view == 0 else 0.51 * LEVEL + 1e-5
            torch.testing.assert_close(out[i], ref, atol=tol, rtol=0)
            top, left, h, w = choice.erase[i].tolist()
            expected = torch.tensor(params.erase_values()).view(3, 1, 1).expand(3, h, w)
            assert torch.equal(out[i, :, top:top + h, left:left + w], expected)


def test_batched_erasing_with_a_fill_equals_the_per_sample_loop():
    params = AugmentParams(height=32, width=16, erase_p=0.7, erase_fill="imagenet_mean")
    boxes = draw_view_batch(params, np.arange(40), 0).erase
    views = torch.randn(40, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    fill = params.erase_values()
    looped = dp._erase_(views.clone(), boxes, vectorised=False, fill=fill)
    assert torch.equal(dp._erase_(views.clone(), boxes, vectorised=True, fill=fill), looped)
    assert int((looped[:, 0] == IMAGENET_MEAN[0]).flatten(1).any(dim=1).sum()) > 10


def test_exif_orientation_is_ignored_by_both_pipelines(tmp_path):
    """The crops are used as stored: DALI's decoder rotated an orientation-6 JPEG, PIL did not."""
    yy, xx = np.mgrid[0:64, 0:32]
    pixels = np.stack([4 * yy, 8 * xx, 255 - 4 * yy], axis=-1).clip(0, 255).astype(np.uint8)
    records = []
    for orientation in (1, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        path = tmp_path / f"o{orientation}.jpg"
        Image.fromarray(pixels).save(path, quality=95, exif=exif)
        records.append(ImageRecord(path=str(path), pid=0, camid=0))
    dali_images = next(iter(dp.eval_loader(records, 64, 32, batch_size=3, num_workers=1)))[0]
    tv_images = next(iter(build_tv_eval_loader(records, 64, 32, batch_size=3)))[0]
    difference = (dali_images - tv_images).abs().amax(dim=(1, 2, 3))
    assert difference.max() < 4 * LEVEL, difference  # JPEG decoders' rounding; a rotation differs by ~100 levels


def test_a_16_bit_png_is_refused_by_both_pipelines_naming_it(tmp_path):
    records = _write_images(tmp_path, [(32, 16), (32, 16)])
    deep = tmp_path / "deep.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 2**16, (32, 16), dtype=np.uint16)).save(deep)
    records.append(ImageRecord(path=str(deep), pid=2, camid=0))
    for loader in (dp.eval_loader(records, 32, 16, batch_size=3), build_tv_eval_loader(records, 32, 16, batch_size=3)):
        with pytest.raises(ValueError, match=r"deep.png.*16 bits per sample"):
            list(loader)
