"""The "torch-gpu" pipeline: workers read the bytes, the training device decodes and augments whole batches.

Needs only torch and torchvision. DataLoader worker processes read each file's bytes and draw the
sample's augmentation choices exactly as the torchvision pipeline draws them (a ``torch.Generator``
per view seeded from the plan's seed, :func:`cacl_dist.data.transforms.draw_view_params`), so both
pipelines crop, flip, erase and gray the same way. The main process decodes a batch of JPEGs at once
with ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG on CUDA, libjpeg-turbo on the CPU) and
runs the augmentation as batched tensor operations there (:mod:`cacl_dist.data.batch_augment`).

A file that is no JPEG (a PNG, a BMP) is decoded in its worker with PIL, as the torchvision
pipeline decodes it, and joins the batch as pixels. A JPEG the batched decoder refuses is
decoded again alone, and, when that fails too, with PIL, whose error names the file.

On CUDA the batch after the current one is decoded and augmented on a side stream while the
current one trains: the loader hands a batch over by making the consumer's stream wait for the
side stream (no host wait), and bytes and choices come from pinned memory with non-blocking
copies. On the CPU the same code runs one batch ahead in the same thread.

Batches are float32 ``B x 3 x H x W`` views on ``device`` and int64 indices on the host, the
contract of the other pipelines.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cacl_dist.data.batch_augment import eval_batch, resize_batch, to_device, view_batch
from cacl_dist.data.epoch_plan import EpochPlan
from cacl_dist.data.image_files import not_a_regular_file
from cacl_dist.data.integrity import check_images
from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines.checks import check_eval_inputs, check_train_inputs
from cacl_dist.data.pipelines.torchvision import Loader, PlanBatchSampler, leave_stopping_to_the_main_process
from cacl_dist.data.transforms import AugmentParams, draw_view_params, load_image, second_view_seed
from cacl_dist.errors import UserError

NAME = "torch-gpu"
JPEG_START = b"\xff\xd8\xff"


def decoder_missing() -> str | None:
    """Why this torchvision cannot decode JPEG batches (a phrase), or None when it can."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: F401
    except ImportError as err:
        return f"torchvision.io.decode_jpeg is not available ({err})"
    return None


@functools.lru_cache(maxsize=None)
def device_problem(device: torch.device) -> str | None:
    """Why JPEGs cannot be decoded on ``device`` (one line), or None when they can; tried once per device.

    torchvision built without nvJPEG imports fine and fails only when it decodes on CUDA, so a tiny
    JPEG (encoded here) is decoded there once.
    """
    if (why := decoder_missing()) is not None:
        return why
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            data = encode_jpeg(torch.full((3, 8, 8), 128, dtype=torch.uint8))
            decode_jpeg([data], mode=ImageReadMode.RGB, device=device)
    except Exception as exc:  # any failure means: this device cannot decode
        lines = str(exc).strip().splitlines()  # torchvision's first line says what failed
        return f"{type(exc).__name__}: {lines[0] if lines else ''}".strip()
    return None


def read_payload(path: str) -> tuple[torch.Tensor, bool]:
    """(the file's bytes as a uint8 tensor, False) for a JPEG; (uint8 3 x H x W pixels from PIL, True) otherwise."""
    try:
        if (why := not_a_regular_file(os.stat(path).st_mode)) is not None:
            raise UserError(why)
        data = np.fromfile(path, dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read the image {path}: {err}; check that the file exists and is a valid image") \
            from err
    if data[:3].tobytes() == JPEG_START:
        return torch.from_numpy(data), False
    return load_image(path), True


def draw_choices(params: AugmentParams, seed: int) -> torch.Tensor:
    """2 x 7 int64: per view (flip, top, left, erase top, left, height, width), the torchvision pipeline's draws."""
    rows = []
    for view_seed in (seed, second_view_seed(seed)):
        view = draw_view_params(params, torch.Generator().manual_seed(view_seed))
        rows.append([int(view.flip), view.top, view.left, *(view.erase or (0, 0, 0, 0))])
    return torch.tensor(rows, dtype=torch.int64)


class _Batch:
    """What workers hand over: JPEG bytes in one flat tensor (slot ``i`` is ``flat[offsets[i]:offsets[i+1]]``,
    empty for a slot decoded in the worker), PIL-decoded pixels by slot, indices, choices (or None)."""

    def __init__(self, items: list[tuple]):
        payloads = [item[0] for item in items]
        decoded = [item[1] for item in items]
        sizes = [0 if d else p.numel() for p, d in zip(payloads, decoded)]
        self.offsets = torch.tensor(np.concatenate([[0], np.cumsum(sizes)]), dtype=torch.int64)
        jpegs = [p for p, d in zip(payloads, decoded) if not d]
        self.flat = torch.cat(jpegs) if jpegs else torch.zeros(0, dtype=torch.uint8)
        self.pixels = {slot: p for slot, (p, d) in enumerate(zip(payloads, decoded)) if d}
        self.indices = torch.tensor([item[2] for item in items], dtype=torch.int64)
        self.choices = torch.stack([item[3] for item in items]) if items[0][3] is not None else None

    def pin_memory(self) -> _Batch:
        """Called by the DataLoader's pinning thread (``pin_memory=True``)."""
        self.flat = self.flat.pin_memory()
        self.pixels = {slot: p.pin_memory() for slot, p in self.pixels.items()}
        if self.choices is not None:
            self.choices = self.choices.pin_memory()
        return self


class _Files(Dataset):
    """Item ``index`` or ``(index, aug_seed)`` -> (payload, decoded in the worker, index, choices or None)."""

    def __init__(self, records: Sequence[ImageRecord], params: AugmentParams | None):
        self.records = records
        self.params = params

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, item):
        index, seed = item if self.params is not None else (item, None)
        payload, decoded = read_payload(self.records[index].path)
        choices = draw_choices(self.params, int(seed)) if self.params is not None else None
        return payload, decoded, int(index), choices


def _decode_one(data: torch.Tensor, path: str, device: torch.device) -> torch.Tensor:
    """One JPEG on ``device``; PIL when the JPEG decoder refuses it (its error names the file)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return to_device(load_image(path), device)


def decode_batch(batch: _Batch, paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """uint8 RGB images (3 x h x w) of every slot on ``device``: JPEGs decoded together, the rest copied."""
    from torchvision.io import ImageReadMode, decode_jpeg

    count = batch.indices.numel()
    offsets = batch.offsets.tolist()
    jpeg_slots = [i for i in range(count) if i not in batch.pixels]
    data = [batch.flat[offsets[i] : offsets[i + 1]] for i in jpeg_slots]
    images: list[torch.Tensor | None] = [None] * count
    if data:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad image fails the batch: decode each alone to find it
            decoded = [_decode_one(d, paths[i], device) for d, i in zip(data, jpeg_slots)]
        for slot, image in zip(jpeg_slots, decoded):
            images[slot] = image
    for slot, pixels in batch.pixels.items():
        images[slot] = pixels.to(device, non_blocking=True)
    return images


class TorchGpuLoader:
    """Iterates a DataLoader of :class:`_Batch` and turns each into tensors on ``device``, one batch ahead.

    ``finish(batch, images)`` makes the yielded tuple from the decoded images (uint8 on ``device``).
    """

    def __init__(self, loader: DataLoader, records: Sequence[ImageRecord], device: torch.device, finish):
        self.loader = loader
        self.records = records
        self.device = device
        self.finish = finish

    def __len__(self) -> int:
        return len(self.loader)

    def _prepare(self, batch: _Batch, stream) -> tuple:
        paths = [self.records[i].path for i in batch.indices.tolist()]
        if stream is None:
            return self.finish(batch, decode_batch(batch, paths, self.device))
        with torch.cuda.stream(stream):
            return self.finish(batch, decode_batch(batch, paths, self.device))

    def _hand_over(self, ready: tuple, stream) -> tuple:
        """The consumer's stream waits for the side stream; its tensors are marked as used there."""
        if stream is None:
            return ready
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(stream)
        for tensor in ready:
            if tensor.is_cuda:
                tensor.record_stream(current)
        return ready

    def __iter__(self) -> Iterator[tuple]:
        if len(self.loader) == 0:
            return
        stream = None
        if self.device.type == "cuda":
            # what nvJPEG must never see, as for DALI (checked once per process and file)
            check_images(self.records[i].path for i in _planned(self.loader))
            stream = torch.cuda.Stream(self.device)
        pending = None
        for batch in self.loader:
            ready = self._prepare(batch, stream)
            if pending is not None:
                yield self._hand_over(pending, stream)
            pending = ready
        if pending is not None:
            yield self._hand_over(pending, stream)


def _planned(loader: DataLoader) -> list[int]:
    """Dataset indices a loader will read (from its batch sampler or sampler)."""
    if isinstance(loader.batch_sampler, PlanBatchSampler):
        sampler = loader.batch_sampler
        return sampler.indices[sampler.start_iter :].reshape(-1).tolist()
    return list(loader.sampler)


def _data_loader(dataset: Dataset, device: torch.device, num_workers: int, **sampling) -> DataLoader:
    return Loader(dataset, num_workers=num_workers, collate_fn=_Batch,
                  worker_init_fn=leave_stopping_to_the_main_process if num_workers > 0 else None,
                  pin_memory=device.type == "cuda", persistent_workers=False, **sampling)


def train_loader(records: Sequence[ImageRecord], params: AugmentParams, plan: EpochPlan, start_iter: int = 0,
                 num_workers: int = 0, device: torch.device | str = "cpu") -> TorchGpuLoader:
    """This rank's batches ``(views_rgb B x 3 x H x W, views_gray on device, indices int64 on the host)``."""
    device = _device(device)
    check_train_inputs(plan, len(records), start_iter)
    loader = _data_loader(_Files(records, params), device, num_workers,
                          batch_sampler=PlanBatchSampler(plan, start_iter))

    def finish(batch: _Batch, images: list[torch.Tensor]) -> tuple:
        resized = resize_batch(images, params.height, params.width, params.interpolation)
        choices = to_device(batch.choices, device)
        return (view_batch(resized, choices[:, 0], params, gray=False),
                view_batch(resized, choices[:, 1], params, gray=params.gray_second_view), batch.indices)

    return TorchGpuLoader(loader, records, device, finish)


def eval_loader(records: Sequence[ImageRecord], height: int, width: int, batch_size: int, num_workers: int = 0,
                gray: bool = False, start: int = 0, end: int | None = None,
                device: torch.device | str = "cpu", interpolation: str = "bilinear") -> TorchGpuLoader:
    """Batches ``(images on device, global indices on the host)`` over ``records[start:end]`` in order."""
    device = _device(device)
    end = check_eval_inputs(len(records), batch_size, start, end)
    loader = _data_loader(_Files(records, None), device, num_workers, batch_size=batch_size,
                          sampler=range(start, end))

    def finish(batch: _Batch, images: list[torch.Tensor]) -> tuple:
        return eval_batch(resize_batch(images, height, width, interpolation), gray), batch.indices

    return TorchGpuLoader(loader, records, device, finish)


def _device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cuda", "cpu"):
        raise UserError(f"the torch-gpu pipeline runs on CUDA or the CPU, not on '{device}'")
    if (why := decoder_missing()) is not None:
        raise UserError(f"the torch-gpu pipeline cannot run: {why}; use the torchvision pipeline")
    return device


__all__ = ["NAME", "TorchGpuLoader", "decode_batch", "decoder_missing", "device_problem", "draw_choices", "eval_loader",
           "read_payload", "train_loader"]
