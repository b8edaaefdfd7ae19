"""The torch-gpu pipeline: the torchvision pipeline's choices and pixels, per-image fallback, one-line errors.

On the CPU the pipeline decodes with torchvision's libjpeg-turbo decoder, which gives PIL's pixels for
these JPEGs, and resizes with the same torchvision call: every view equals the torchvision pipeline's
bit for bit. On CUDA (the tests marked gpu, each with its CPU twin here) nvJPEG decodes and the
antialiased resize runs CUDA's float kernel, so pixels may differ by the tolerances stated there.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cacl_dist.data import batch_augment
from cacl_dist.data.epoch_plan import EpochPlan
from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines import torch_gpu as tg
from cacl_dist.data.pipelines import torchvision as tv
from cacl_dist.data.sampler import GlobalBatches
from cacl_dist.data.transforms import (
    IMAGENET_STD,
    AugmentParams,
    draw_view_params,
    load_image,
    second_view_seed,
    two_views,
)
from cacl_dist.errors import UserError

LEVEL = 1.0 / 255.0 / min(IMAGENET_STD)  # one uint8 level after normalisation, at most
#: exact, up- and downscaled to 32 x 16; JPEG, PNG and a JPEG of one channel
IMAGES = [((32, 16), "jpg"), ((20, 10), "jpg"), ((50, 23), "png"), ((64, 32), "jpg"), ((33, 17), "L.jpg"),
          ((64, 32), "jpg"), ((16, 8), "png"), ((64, 32), "jpg")]


def _write(folder, images=IMAGES, seed: int = 0, subsampling: int = -1) -> list[ImageRecord]:
    """Images of the given sizes and kinds; JPEGs at quality 90 with PIL's chroma ``subsampling`` (-1: 4:2:0)."""
    rng = np.random.default_rng(seed)
    records = []
    for i, ((h, w), kind) in enumerate(images):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([127 + 100 * np.sin(yy / 3 + i) * np.cos(xx / 4), 127 + 100 * np.cos(yy / 5 + xx / 3),
                           rng.integers(0, 256, (h, w))], axis=-1).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        if kind.startswith("L."):
            image, kind = image.convert("L"), kind[2:]
        path = folder / f"img{i}.{kind}"
        image.save(path, **({"quality": 90, "subsampling": subsampling} if kind == "jpg" else {}))
        records.append(ImageRecord(path=str(path), pid=i, camid=0))
    return records


def _plan(indices, seed: int = 0) -> EpochPlan:
    indices = np.atleast_2d(indices).astype(np.int64)
    seeds = np.random.default_rng(seed).integers(0, 2**62, indices.shape)
    return EpochPlan.build(GlobalBatches(indices=indices, aug_seeds=seeds), 0, 1)


PARAMS = AugmentParams(height=32, width=16, pad=4, erase_p=0.7)


def test_choices_are_the_torchvision_pipelines_draws():
    for seed in (0, 1, 12345, 2**61 + 7):
        choices = tg.draw_choices(PARAMS, seed)
        for view, view_seed in enumerate((seed, second_view_seed(seed))):
            ref = draw_view_params(PARAMS, torch.Generator().manual_seed(view_seed))
            assert choices[view, :3].tolist() == [int(ref.flip), ref.top, ref.left]
            assert tuple(choices[view, 3:].tolist()) == (ref.erase or (0, 0, 0, 0))
    drawn = torch.stack([tg.draw_choices(PARAMS, s) for s in range(400)])
    assert 0.4 < drawn[:, :, 0].float().mean() < 0.6  # the draws vary: flips, crops and erasing all occur
    assert drawn[:, :, 1].unique().numel() == 2 * PARAMS.pad + 1 and (drawn[:, :, 5] > 0).any()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_training_views_equal_the_torchvision_pipelines_on_the_cpu(tmp_path, interpolation):
    records = _write(tmp_path)
    params = AugmentParams(height=32, width=16, pad=4, erase_p=0.7, interpolation=interpolation)
    plan = _plan([[0, 1, 2, 3], [4, 5, 6, 7], [3, 2, 1, 0]], seed=5)
    ours = list(tg.train_loader(records, params, plan))
    theirs = list(tv.train_loader(records, params, plan))
    assert len(ours) == len(theirs) == 3
    for (rgb, gray, index), (ref_rgb, ref_gray, ref_index) in zip(ours, theirs):
        assert rgb.shape == (4, 3, 32, 16) and rgb.dtype == torch.float32 and index.dtype == torch.int64
        assert torch.equal(index, ref_index)
        assert torch.equal(rgb, ref_rgb) and torch.equal(gray, ref_gray)
    for it in range(3):  # the reference itself, image by image
        for slot, index in enumerate(plan.local_indices[it].tolist()):
            ref = two_views(load_image(records[index].path), params, int(plan.local_seeds[it, slot]))
            assert torch.equal(ours[it][0][slot], ref[0]) and torch.equal(ours[it][1][slot], ref[1])


def test_eval_batches_equal_the_torchvision_pipelines(tmp_path):
    records = _write(tmp_path)
    for gray in (False, True):
        ours = list(tg.eval_loader(records, 32, 16, 3, gray=gray, start=1, end=8, interpolation="bicubic"))
        theirs = list(tv.eval_loader(records, 32, 16, 3, gray=gray, start=1, end=8, interpolation="bicubic"))
        assert [i.tolist() for _, i in ours] == [[1, 2, 3], [4, 5, 6], [7]]
        for (images, index), (ref, ref_index) in zip(ours, theirs):
            assert torch.equal(index, ref_index) and torch.equal(images, ref)
    assert list(tg.eval_loader(records, 32, 16, 4, start=3, end=3)) == []


def test_workers_resume_and_a_gray_free_second_view(tmp_path):
    records = _write(tmp_path)
    params = AugmentParams(height=32, width=16, pad=4, gray_second_view=False)
    plan = _plan([[0, 1, 2, 3], [4, 5, 6, 7], [7, 6, 5, 4]], seed=2)
    loader = tg.train_loader(records, params, plan, start_iter=1, num_workers=1)
    assert len(loader) == 2
    got = list(loader)
    ref = list(tv.train_loader(records, params, plan, start_iter=1))
    for a, b in zip(got, ref):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(got[0][0], got[0][1])  # two RGB views, drawn apart
    with pytest.raises(ValueError, match="start_iter=4 is outside"):
        tg.train_loader(records, params, plan, start_iter=4)


def test_jpegs_are_decoded_together_and_other_files_per_image(tmp_path, monkeypatch):
    import torchvision.io

    records = _write(tmp_path)
    calls = []
    original = torchvision.io.decode_jpeg

    def counting(data, *args, **kwargs):
        calls.append(len(data) if isinstance(data, list) else 1)
        return original(data, *args, **kwargs)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", counting)
    payloads = [tg.read_payload(r.path) for r in records]
    assert [decoded for _, decoded in payloads] == [kind == "png" for _, kind in IMAGES]
    assert payloads[2][0].shape == (3, 50, 23) and payloads[0][0].dim() == 1  # PNG pixels, JPEG bytes
    list(tg.eval_loader(records, 32, 16, 8))
    assert calls == [6]  # the six JPEGs of the batch in one call, no PNG among them


def _bad_files(folder) -> dict[str, bytes]:
    good = (folder / "good.jpg")
    Image.fromarray(np.full((16, 8, 3), 100, np.uint8)).save(good, quality=90)
    data = good.read_bytes()
    return {"cut.jpg": data[: len(data) // 2], "header.jpg": data[:20], "noise.jpg": bytes(range(256)) * 4,
            "empty.jpg": b""}


@pytest.mark.parametrize("num_workers", [0, 1])
def test_an_unreadable_file_is_one_line_naming_it(tmp_path, num_workers):
    records = _write(tmp_path, IMAGES[:3])
    for name, data in _bad_files(tmp_path).items():
        (tmp_path / name).write_bytes(data)
        bad = [*records, ImageRecord(path=str(tmp_path / name), pid=9, camid=0)]
        with pytest.raises(UserError) as err:
            list(tg.eval_loader(bad, 32, 16, 4, num_workers=num_workers))
        message = str(err.value)
        assert "\n" not in message and name in message and "cannot read the image" in message, message
    missing = [*records, ImageRecord(path=str(tmp_path / "gone.jpg"), pid=9, camid=0)]
    with pytest.raises(UserError, match="cannot read the image .*gone.jpg"):
        list(tg.train_loader(missing, PARAMS, _plan([[0, 1, 2, 3]]), num_workers=num_workers))


def test_batched_ops_move_pixels_as_the_per_image_reference():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (5, 3, 12, 7), generator=gen, dtype=torch.uint8)
    flip, top, left = torch.tensor([0, 1, 1, 0, 1]), torch.tensor([0, 4, 2, 3, 1]), torch.tensor([4, 0, 3, 1, 2])
    out = batch_augment.flip_crop(images, flip, top, left, pad=2)
    for i in range(5):
        ref = images[i].flip(-1) if flip[i] else images[i]
        ref = torch.nn.functional.pad(ref, (2, 2, 2, 2))[:, top[i] : top[i] + 12, left[i] : left[i] + 7]
        assert torch.equal(out[i], ref)
    boxes = torch.tensor([[0, 0, 0, 0], [1, 2, 3, 4], [0, 0, 12, 7], [11, 6, 1, 1], [5, 5, 0, 3]])
    erased = batch_augment.erase_(torch.zeros(5, 3, 12, 7), boxes, (1.0, 2.0, 3.0))
    for i, (t, lft, h, w) in enumerate(boxes.tolist()):
        ref = torch.zeros(3, 12, 7)
        ref[:, t : t + h, lft : lft + w] = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1)
        assert torch.equal(erased[i], ref)
    mixed = [images[0], images[1, :, :10, :5], images[2]]  # two sizes: order kept
    resized = batch_augment.resize_batch(mixed, 12, 7)
    assert torch.equal(resized[0], images[0]) and torch.equal(resized[2], images[2])
    with pytest.raises(ValueError, match="at least one image"):
        batch_augment.resize_batch([], 12, 7)


# ------------------------------------------------------------------------------------------------ CUDA
@pytest.mark.gpu
def test_cuda_views_match_the_cpu_pipeline_within_the_decoder_and_resize_differences(tmp_path):
    """CPU twin: test_training_views_equal_the_torchvision_pipelines_on_the_cpu (bit for bit there).

    The choices are the same, so flips, crops and erasing rectangles agree exactly (an erased pixel holds
    the fill value in both); the pixels differ by CUDA's float resize kernel, which can round a pixel to
    the neighbouring level (at most one: PNGs, decoded by PIL for both), and for JPEGs also by nvJPEG's
    IDCT against libjpeg-turbo's (4:4:4 JPEGs here, so no chroma upsampling differs; Market-1501's 4:2:0
    JPEGs are measured by the GPU acceptance's pipeline part). A wrong crop, flip or view would differ
    by tens of levels on average.
    """
    records = _write(tmp_path, subsampling=0)
    plan = _plan([[0, 1, 2, 3, 4, 5, 6, 7]], seed=5)
    (rgb, gray, index), = list(tg.train_loader(records, PARAMS, plan, device="cuda"))
    (ref_rgb, ref_gray, ref_index), = list(tv.train_loader(records, PARAMS, plan))
    assert rgb.is_cuda and gray.is_cuda and not index.is_cuda and torch.equal(index, ref_index)
    for ours, ref in ((rgb.cpu(), ref_rgb), (gray.cpu(), ref_gray)):
        assert ours.shape == ref.shape
        diff = (ours - ref).abs() / LEVEL
        for slot, (_, kind) in enumerate(IMAGES):
            limit_mean, limit_max = (0.5, 1.01) if kind == "png" else (1.5, 16.0)
            assert diff[slot].mean() < limit_mean and diff[slot].max() < limit_max, (slot, kind, diff[slot].max())
    choices = torch.stack([tg.draw_choices(PARAMS, int(s)) for s in plan.local_seeds[0]])
    for slot in range(8):  # erased rectangles are exactly the fill value in both pipelines
        t, lft, h, w = choices[slot, 0, 3:].tolist()
        assert (rgb[slot, :, t : t + h, lft : lft + w] == 0).all()


@pytest.mark.gpu
def test_cuda_augmentation_never_waits_for_the_device(tmp_path):
    """CPU twin: test_batched_ops_move_pixels_as_the_per_image_reference (the same functions on the CPU)."""
    device = torch.device("cuda", torch.cuda.current_device())
    images = [torch.randint(0, 256, (3, 40 + i % 2, 20), dtype=torch.uint8, device=device) for i in range(6)]
    choices = torch.stack([tg.draw_choices(PARAMS, s) for s in range(6)]).pin_memory()
    batch_augment.normalise(torch.zeros(1, 3, 1, 1, device=device))  # the constants are copied once, before
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        resized = batch_augment.resize_batch(images, 32, 16)
        on_device = batch_augment.to_device(choices, device)
        views = [batch_augment.view_batch(resized, on_device[:, v], PARAMS, gray=v == 1) for v in (0, 1)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert views[0].shape == (6, 3, 32, 16) and views[1].is_cuda


@pytest.mark.gpu
def test_cuda_eval_loader_and_stream_hand_over(tmp_path):
    """CPU twin: test_eval_batches_equal_the_torchvision_pipelines."""
    records = _write(tmp_path, [((64, 32), "jpg")] * 12, subsampling=0)
    batches = list(tg.eval_loader(records, 32, 16, 5, device="cuda"))
    ref = list(tv.eval_loader(records, 32, 16, 5))
    assert [i.tolist() for _, i in batches] == [i.tolist() for _, i in ref]
    for (images, _), (expected, _) in zip(batches, ref):
        assert ((images.cpu() - expected).abs() / LEVEL).mean() < 1.5  # read on the consumer's stream


# ------------------------------------------------------------------------------------------------ 'auto'
@pytest.fixture
def fresh_resolution():
    from cacl_dist.data import pipelines

    pipelines.resolve_pipeline.cache_clear()
    pipelines._dali_fails_on.cache_clear()
    yield pipelines
    pipelines.resolve_pipeline.cache_clear()
    pipelines._dali_fails_on.cache_clear()


def test_auto_on_a_gpu_takes_torch_gpu_when_dali_is_absent_or_cannot_run(fresh_resolution, monkeypatch):
    from cacl_dist.data.pipelines import dali

    pipelines = fresh_resolution
    lines = []
    warnings = []
    monkeypatch.setattr(pipelines.log, "info", lambda msg, *args: lines.append(msg % args))
    monkeypatch.setattr(pipelines.log, "warning", lambda msg, *args: (lines.append(msg % args), warnings.append(1)))
    monkeypatch.setattr(tg, "device_problem", lambda device: None)
    monkeypatch.setattr(dali, "dali_available", lambda: False)
    cuda = torch.device("cuda", 0)
    assert pipelines.resolve_pipeline("auto", device=cuda) == "torch-gpu"
    assert pipelines.resolve_pipeline("auto", "data.eval_pipeline", device=cuda) == "torch-gpu"
    assert len(lines) == 2 and "\n" not in lines[0]
    assert "DALI is not installed (`pip install cacl_dist[dali]` adds it), using torch-gpu" in lines[0]
    assert pipelines.resolve_pipeline("auto", device=torch.device("cpu")) == "torchvision"  # the CPU keeps its order
    monkeypatch.setattr(dali, "dali_available", lambda: True)
    monkeypatch.setattr(dali, "require_dali", lambda key="data.pipeline": type("M", (), {"__version__": "2.4.0"}))

    def probe(device):
        raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient")

    monkeypatch.setattr(dali, "probe", probe)
    pipelines.resolve_pipeline.cache_clear()
    lines.clear()
    assert pipelines.resolve_pipeline("auto", device=cuda) == "torch-gpu"
    assert len(lines) == 1 and "cannot run on cuda:0" in lines[0] and "using torch-gpu" in lines[0]
    assert warnings == [1]  # an installed DALI that cannot run is worth a warning
    monkeypatch.setattr(dali, "probe", lambda device: None)
    pipelines.resolve_pipeline.cache_clear()
    pipelines._dali_fails_on.cache_clear()
    assert pipelines.resolve_pipeline("auto", device=cuda) == "dali"  # DALI first when it runs


def test_an_explicit_torch_gpu_where_jpegs_cannot_be_decoded_is_one_line(fresh_resolution, monkeypatch):
    pipelines = fresh_resolution
    assert pipelines.resolve_pipeline("torch-gpu", device=torch.device("cpu")) == "torch-gpu"
    monkeypatch.setattr(tg, "device_problem", lambda device: "RuntimeError: not compiled with nvJPEG support")
    pipelines.resolve_pipeline.cache_clear()
    with pytest.raises(UserError, match=r"data\.eval_pipeline is 'torch-gpu' but JPEGs cannot be decoded on "
                                        r"cuda:0 .*nvJPEG support.*auto or torchvision"):
        pipelines.resolve_pipeline("torch-gpu", "data.eval_pipeline", device=torch.device("cuda", 0))


def test_the_decoder_probe_runs_on_the_cpu_and_names_what_fails(monkeypatch):
    import torchvision.io

    tg.device_problem.cache_clear()
    assert tg.device_problem(torch.device("cpu")) is None

    def no_nvjpeg(*args, **kwargs):
        raise RuntimeError("decode_jpegs_cuda: torchvision not compiled with nvJPEG support\n(C++ frames)")

    monkeypatch.setattr(torchvision.io, "decode_jpeg", no_nvjpeg)
    tg.device_problem.cache_clear()
    assert tg.device_problem(torch.device("cpu")) == ("RuntimeError: decode_jpegs_cuda: torchvision not "
                                                       "compiled with nvJPEG support")
    tg.device_problem.cache_clear()
