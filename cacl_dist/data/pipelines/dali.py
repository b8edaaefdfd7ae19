"""The "dali" pipeline: NVIDIA DALI decodes and augments the two views, on the GPU or the CPU.

One DALI pipeline per rank and epoch. DALI's file reader reads this rank's share of every
global batch of the :class:`~cacl_dist.data.epoch_plan.EpochPlan` in plan order, with the dataset
indices as labels, in its own threads; an external source feeds the augmentation choices of
both views (drawn on the host from each sample's seed in the plan, a batch at a time, see
:mod:`cacl_dist.data.view_params`). DALI does the pixel work: decoding (``mixed`` on the GPU,
``cpu`` without one), the antialiased resize (bilinear or bicubic), the crop of the zero-padded image, the
horizontal flip, ITU-R 601 luma for the second view and the normalisation. Two element-wise
steps finish in torch on the same device: the luma becomes three channels, each normalised
with its ImageNet mean/std, and the erasing rectangles are filled. Batches are torch tensors on
the rank's device: float32 ``B x 3 x H x W`` views and int64 indices, the contract of the
torchvision pipeline.

With a CUDA device the pipeline runs on ``device_id`` = that device and the images never
leave the GPU; with ``device=cpu`` the same graph runs CPU-only (``device_id=None``).

DALI raises a Python error for an image it cannot decode, but an image whose header it cannot
parse (random bytes, a JPEG cut inside its header, a GIF) ends the process with a segmentation
fault. So before a loader builds its pipeline it checks the structure of every file it will
read, once per process (:func:`cacl_dist.data.integrity.check_images`), and raises an error
naming the bad ones.

DALI is an optional extra, imported only when this pipeline is used.
"""

from __future__ import annotations

import collections
import functools
import importlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cacl_dist.data.epoch_plan import EpochPlan
from cacl_dist.data.integrity import check_images
from cacl_dist.data.layouts import ImageRecord
from cacl_dist.data.pipelines.checks import check_eval_inputs, check_train_inputs
from cacl_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentParams, load_image
from cacl_dist.data.view_params import draw_view_batch
from cacl_dist.errors import UserError

NAME = "dali"
INSTALL_HINT = "pip install cacl_dist[dali]"
INSTALL_HINT_CUDA12 = "pip install cacl_dist[dali-cu12]"
PREFETCH = 2


@functools.lru_cache(maxsize=1)
def dali_available() -> bool:
    """True when NVIDIA DALI can be imported."""
    try:
        importlib.import_module("nvidia.dali")
    except ImportError:
        return False
    return True


def require_dali(key: str = "data.pipeline"):
    """The ``nvidia.dali`` module, or a ValueError naming config ``key`` that says how to install it."""
    if not dali_available():
        raise UserError(f"{key} is 'dali' but NVIDIA DALI is not installed; run `{INSTALL_HINT}` "
                        f"(or set {key} to auto or torchvision)")
    return importlib.import_module("nvidia.dali")


def probe(device: torch.device | str) -> None:
    """Build and run a one-sample pipeline on ``device``; raises what DALI raises when it cannot run here.

    A DALI wheel built for a newer CUDA than the driver supports imports fine and fails only
    when a pipeline is built on the GPU; ``resolve_pipeline`` calls this once to find out.
    """
    dali = require_dali()
    device_id = _device_id(torch.device(device))
    pipe = dali.Pipeline(batch_size=1, num_threads=1, device_id=device_id, seed=0, exec_dynamic=True)
    with pipe:
        value = dali.fn.random.uniform(shape=[1], seed=0)
        pipe.set_outputs(value.gpu() if device_id is not None else value)
    try:
        pipe.build()
        pipe.run()
    finally:
        del pipe


def _device_id(device: torch.device) -> int | None:
    """DALI's device_id for a torch device: the CUDA ordinal, or None for a CPU-only pipeline."""
    if device.type == "cuda":
        return device.index if device.index is not None else torch.cuda.current_device()
    if device.type != "cpu":
        raise UserError(f"the DALI pipeline runs on CUDA or the CPU, not on '{device}'")
    return None


def _decode(dali, encoded, device_id: int | None):
    """uint8 RGB images as stored: EXIF orientation is ignored, as PIL (the torchvision pipeline) ignores it."""
    return dali.fn.decoders.image(encoded, device="cpu" if device_id is None else "mixed",
                                  output_type=dali.types.RGB, adjust_orientation=False)


def _gray_luma(dali, images):
    """ITU-R 601 luma of uint8 RGB images (DALI rounds it to uint8), one channel."""
    return dali.fn.color_space_conversion(images, image_type=dali.types.RGB, output_type=dali.types.GRAY)


def _view(dali, images, params: AugmentParams, start, mirror, gray: bool):
    """One view: zero-padded crop, mirror; normalised RGB, or luma / 255 when ``gray`` (CHW float)."""
    fn, types = dali.fn, dali.types
    if gray:
        images = _gray_luma(dali, images)
    if params.pad > 0:  # crop window of the zero-padded image, in the unpadded image's coordinates
        images = fn.slice(images, start=start, shape=[params.height, params.width], axis_names="HW",
                          out_of_bounds_policy="pad", fill_values=0)
    mean, std = ([0.0], [255.0]) if gray else ([255.0 * m for m in IMAGENET_MEAN], [255.0 * s for s in IMAGENET_STD])
    return fn.crop_mirror_normalize(images, mirror=mirror, mean=mean, std=std, dtype=types.FLOAT,
                                    output_layout="CHW")


def _train_pipeline(dali, files: list[str], labels: list[int], source, params: AugmentParams, batch_size: int,
                    num_threads: int, device_id: int | None):
    """Files in plan order (read by DALI's reader threads) + choices from ``source`` -> two views, indices."""
    fn = dali.fn
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=0,
                         prefetch_queue_depth=PREFETCH, exec_dynamic=True)
    with pipe:
        encoded, index = fn.readers.file(files=files, labels=labels, random_shuffle=False)
        per_view = 2 if params.pad > 0 else 1  # (slice start,) mirror flag
        choices = fn.external_source(source=source, num_outputs=2 * per_view, batch=True)
        images = _decode(dali, encoded, device_id)
        images = fn.resize(images, resize_x=params.width, resize_y=params.height,
                           interp_type=_interp_type(dali, params.interpolation), antialias=True)
        first, second = choices[:per_view], choices[per_view:]
        view_rgb = _view(dali, images, params, first[0], first[-1], gray=False)
        view_2 = _view(dali, images, params, second[0], second[-1], gray=params.gray_second_view)
        pipe.set_outputs(view_rgb, view_2, index)
    return pipe


def _eval_pipeline(dali, files: list[str], labels: list[int], height: int, width: int, gray: bool, batch_size: int,
                   num_threads: int, device_id: int | None, interpolation: str = "bilinear"):
    """Files in order -> resized, normalised images and indices (the last batch padded by repetition)."""
    fn = dali.fn
    pipe = dali.Pipeline(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=0,
                         prefetch_queue_depth=PREFETCH, exec_dynamic=True)
    with pipe:
        encoded, index = fn.readers.file(files=files, labels=labels, random_shuffle=False, pad_last_batch=True)
        images = _decode(dali, encoded, device_id)
        images = fn.resize(images, resize_x=width, resize_y=height, interp_type=_interp_type(dali, interpolation),
                           antialias=True)
        params = AugmentParams(height=height, width=width, pad=0)
        pipe.set_outputs(_view(dali, images, params, None, 0, gray=gray), index)
    return pipe


@functools.lru_cache(maxsize=None)
def _luma_affine(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(-mean / std, 1 / std) of the ImageNet channels as 1 x 3 x 1 x 1 tensors on ``device``.

    Built once per device: a tensor made from Python numbers on a CUDA device is a blocking
    host-to-device copy, which every batch would otherwise pay.
    """
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (-mean / std).to(device), (1.0 / std).to(device)
def _interp_type(dali, interpolation: str):
    """DALI's resize filter for a name of :data:`cacl_dist.data.names.INTERPOLATIONS`."""
    return {"bilinear": dali.types.INTERP_LINEAR, "bicubic": dali.types.INTERP_CUBIC}[interpolation]


def _normalise_luma(luma: torch.Tensor) -> torch.Tensor:
    """B x 1 x H x W luma in [0, 1] -> B x 3 x H x W, each channel normalised with its mean/std."""
    shift, scale = _luma_affine(luma.device)
    return torch.addcmul(shift, luma, scale)


def _erase_(views: torch.Tensor, boxes: np.ndarray, vectorised: bool | None = None,
            fill: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
    """Set the rectangle ``boxes[i] = (top, left, height, width)`` of every view ``i`` to ``fill`` in place.

    ``fill`` holds one value per channel (``AugmentParams.erase_values()``). On CUDA one masked
    fill per channel over the batch (a few kernels instead of one per erased sample); on the
    CPU a loop over the erased samples, which touches only their rectangles.
    """
    if vectorised is None:
        vectorised = views.is_cuda
    if vectorised:
        box = torch.from_numpy(boxes).to(views.device, non_blocking=True)
        rows = torch.arange(views.shape[-2], device=views.device)
        cols = torch.arange(views.shape[-1], device=views.device)
        in_rows = (rows >= box[:, :1]) & (rows < box[:, :1] + box[:, 2:3])
        in_cols = (cols >= box[:, 1:2]) & (cols < box[:, 1:2] + box[:, 3:4])
        inside = in_rows[:, :, None] & in_cols[:, None, :]
        for channel, value in enumerate(fill):
            views[:, channel].masked_fill_(inside, value)
        return views
    values = torch.tensor(fill, dtype=views.dtype, device=views.device).view(-1, 1, 1)
    for i in np.flatnonzero(boxes[:, 2] > 0).tolist():
        top, left, h, w = boxes[i].tolist()
        views[i, :, top : top + h, left : left + w] = values
    return views


class _ChoiceSource:
    """External-source callback: the augmentation inputs of batch after batch, from ``batch(i)``.

    ``batch(i)`` returns (pipeline inputs, meta); the meta of batches handed to DALI but not
    returned yet waits in order and goes with its batch when it comes out.
    """

    def __init__(self, num_batches: int, batch):
        self.num_batches = num_batches
        self.batch = batch
        self.next = 0
        self.in_flight: collections.deque = collections.deque()

    def __call__(self) -> list:
        if self.next >= self.num_batches:
            raise StopIteration
        i, self.next = self.next, self.next + 1
        inputs, meta = self.batch(i)
        self.in_flight.append(meta)
        return inputs


def _output_stream(device: torch.device):
    """The CUDA stream DALI binds its outputs to: torch's current stream on ``device``; None on the CPU.

    With a stream, ``pipe.run`` returns as soon as the batch is scheduled (no host wait): DALI
    makes the stream wait for the batch, and the buffers are freed in that stream's order, after
    the torch kernels queued on it have read them. Without one (the CPU pipeline) outputs are
    ready when ``run`` returns.
    """
    return torch.cuda.current_stream(device) if device.type == "cuda" else None


def _to_torch(tensor_list, device: torch.device) -> torch.Tensor:
    """A dense DALI TensorList as a torch tensor on ``device``, shared through DLPack without a copy.

    With ``exec_dynamic`` the buffer belongs to the returned tensor, so later runs of the pipeline
    do not overwrite it; GPU outputs stay on the GPU, CPU outputs are moved to ``device``. The
    DLPack export is told torch's current stream on ``device`` (``torch.from_dlpack`` passes it),
    the stream the outputs are already bound to, so it adds no wait.
    """
    from nvidia.dali.backend import TensorGPU

    dense = tensor_list.as_tensor()
    if isinstance(dense, TensorGPU):
        with torch.cuda.device(device):
            return torch.from_dlpack(dense)
    return torch.from_dlpack(dense).to(device, non_blocking=True)


class DaliLoader:
    """Iterates a DALI pipeline for a known number of batches; the pipeline is built per iteration.

    ``build(source)`` makes the pipeline (``source`` feeds the augmentation inputs, or is None);
    ``finish(tensors, step, meta)`` turns its outputs (torch tensors on the device) into what the
    loader yields; ``batch_paths(step)`` names the files of a batch, to trace a failure to a file;
    ``paths`` are all the files it reads, checked before the pipeline is built.
    """

    def __init__(self, build, make_source, num_batches: int, device: torch.device, finish, batch_paths,
                 paths: Sequence[str] = ()):
        self._build = build
        self._make_source = make_source
        self._num_batches = num_batches
        self._finish = finish
        self._batch_paths = batch_paths
        self._paths = paths
        self.device = device

    def __len__(self) -> int:
        return self._num_batches

    def __iter__(self) -> Iterator[tuple]:
        if self._num_batches == 0:
            return
        check_images(self._paths)  # a header DALI cannot parse would end the process instead of raising
        source = self._make_source()
        pipe = None
        step = 0
        try:
            try:
                pipe = self._build(source)
                pipe.build()
            except RuntimeError as err:
                raise self._error(err, 0, self._num_batches) from err
            for step in range(self._num_batches):
                try:
                    outputs = pipe.run(_output_stream(self.device))
                except (RuntimeError, StopIteration) as err:  # the failing batch or one read ahead
                    raise self._error(err, step, step + PREFETCH + 2) from err
                meta = source.in_flight.popleft() if source is not None else None
                yield self._finish([_to_torch(o, self.device) for o in outputs], step, meta)
        finally:
            del pipe

    def _error(self, err: BaseException, first: int, stop: int) -> Exception:
        """An error naming the first unreadable file of batches ``first .. stop - 1``, if there is one."""
        candidates = list(dict.fromkeys(p for i in range(first, min(stop, self._num_batches))
                                        for p in self._batch_paths(i)))
        for path in candidates:
            try:
                load_image(path)
            except ValueError as bad:
                return UserError(f"the DALI pipeline stopped on an unreadable image: {bad}")
        lines = str(err).strip().splitlines()
        reason = lines[-1] if lines else type(err).__name__
        return RuntimeError(f"the DALI pipeline failed ({reason}) near {len(candidates)} images "
                            f"starting with {candidates[:3]}")


def view_inputs(params: AugmentParams, aug_seeds: np.ndarray, view: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Pipeline inputs (slice start unless ``pad`` is 0, mirror flag) and erasing boxes of one view of a batch."""
    choice = draw_view_batch(params, aug_seeds, view)
    # torchvision flips and then crops the padded image at (top, left); DALI crops the unpadded
    # image at (top - pad, x0) and then mirrors, which is the same when x0 = pad - left.
    x0 = np.where(choice.flip, params.pad - choice.left, choice.left - params.pad)
    start = np.stack([choice.top - params.pad, x0], axis=1).astype(np.int32)
    mirror = choice.flip.astype(np.int32)
    return ([start, mirror] if params.pad > 0 else [mirror]), choice.erase


def train_loader(records: Sequence[ImageRecord], params: AugmentParams, plan: EpochPlan, start_iter: int = 0,
                 num_workers: int = 0, device: torch.device | str = "cpu") -> DaliLoader:
    """This rank's batches ``(views_rgb B x 3 x H x W, views_gray, indices)`` on ``device`` (DALI).

    ``num_workers`` is the number of DALI threads (at least one).
    """
    dali = require_dali()
    device = torch.device(device)
    check_train_inputs(plan, len(records), start_iter)
    indices = plan.local_indices[start_iter:]
    seeds = plan.local_seeds[start_iter:]
    device_id = _device_id(device)

    flat = indices.reshape(-1)
    files = [records[j].path for j in flat.tolist()]

    def batch(i: int):
        inputs_1, erase_1 = view_inputs(params, seeds[i], 0)
        inputs_2, erase_2 = view_inputs(params, seeds[i], 1)
        return inputs_1 + inputs_2, (erase_1, erase_2)

    def finish(tensors: list[torch.Tensor], _step: int, meta) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        view_rgb, view_2, index = tensors
        if params.gray_second_view:
            view_2 = _normalise_luma(view_2)
        fill = params.erase_values()
        return _erase_(view_rgb, meta[0], fill=fill), _erase_(view_2, meta[1], fill=fill), index.reshape(-1).long()

    def build(source):  # the graph draws nothing itself: all choices come from the source
        return _train_pipeline(dali, files, flat.tolist(), source, params, int(indices.shape[1]),
                               max(1, num_workers), device_id)

    per_batch = int(indices.shape[1]) if indices.ndim == 2 else 0
    return DaliLoader(build, lambda: _ChoiceSource(int(indices.shape[0]), batch), int(indices.shape[0]), device,
                      finish, lambda i: files[i * per_batch : (i + 1) * per_batch], files)


def eval_loader(records: Sequence[ImageRecord], height: int, width: int, batch_size: int, num_workers: int = 0,
                gray: bool = False, start: int = 0, end: int | None = None,
                device: torch.device | str = "cpu", interpolation: str = "bilinear") -> DaliLoader:
    """Batches ``(images, global indices)`` over ``records[start:end]`` in order: resize, normalise (DALI).

    ``num_workers`` is the number of DALI threads (at least one).
    """
    dali = require_dali()
    device = torch.device(device)
    end = check_eval_inputs(len(records), batch_size, start, end)
    files = [records[j].path for j in range(start, end)]
    num_batches = -(-(end - start) // batch_size)
    device_id = _device_id(device)

    def finish(tensors: list[torch.Tensor], step: int, _meta) -> tuple[torch.Tensor, torch.Tensor]:
        images, index = tensors
        count = min(batch_size, end - start - step * batch_size)  # the last batch is padded by DALI
        images = _normalise_luma(images[:count]) if gray else images[:count]
        return images, index.reshape(-1)[:count].long()

    def build(_source):
        return _eval_pipeline(dali, files, list(range(start, end)), height, width, gray, batch_size,
                              max(1, num_workers), device_id, interpolation)

    return DaliLoader(build, lambda: None, num_batches, device, finish,
                      lambda i: files[i * batch_size : (i + 1) * batch_size], files)


__all__ = ["NAME", "INSTALL_HINT", "INSTALL_HINT_CUDA12", "DaliLoader", "dali_available", "eval_loader", "probe",
           "require_dali", "train_loader", "view_inputs"]
