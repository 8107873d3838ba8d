"""The ``ffcv`` loader (extra ``[ffcv]``): .beton files read with FFCV's Loader.

``prepare(data, out_dir)`` writes ``train.beton`` and ``test.beton`` with two
fields: ``image``, an ``NDArrayField`` holding the uint8 (C, H, W) image as
is, and ``label``, an ``IntField``. Raw arrays instead of FFCV's JPEG
``RGBImageField``: no compression loss (so all loaders see the same pixels),
and 1-channel data (digits) needs no special case. For 32x32 images the raw
record (3 KiB) is as small as a JPEG would be worth.

Reading: one FFCV ``Loader`` per stream (labeled, and the unlabeled pool for
the consistency modes). Its traversal order is replaced by the epoch's index
streams (``epoch_streams``), so the labeled subset and the example order are
those of the memory loader. FFCV decodes and batches in its own threads; the
random crop (zero pad) + flip is then applied to the uint8 batch on the
training device by the loaders' shared ``base.crop_flip``, drawn from the same
generators. With the same seed the two loaders therefore give identical
batches; FFCV's value is the decode/IO pipeline for data that does not fit
in device memory.

FFCV needs system libraries to build (pkg-config, OpenCV, libjpeg-turbo):
``apt-get install pkg-config libopencv-dev libturbojpeg0-dev`` then
``pip install 'mixsweep[ffcv]'``. Without it ``loader: ffcv`` fails at trial
start with ``FfcvUnavailable`` (never a silent fallback).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixsweep.data.base import (
    Batch,
    LoaderBase,
    Normalize,
    crop_flip,
    crop_flip_params,
    default_workers,
    epoch_generator,
    epoch_streams,
)
from mixsweep.data.datasets import ArrayDataset, DataError
from mixsweep.data.split import Split

INSTALL_HINT = (
    "loader 'ffcv' needs the ffcv package: apt-get install pkg-config libopencv-dev "
    "libturbojpeg0-dev && pip install 'mixsweep[ffcv]' (or use loader: memory)"
)


class FfcvUnavailable(DataError):
    """The ffcv package (or its system libraries) is missing."""


def require_ffcv():
    """Import ffcv or raise FfcvUnavailable naming the extra and the system packages."""
    try:
        import ffcv  # noqa: F401
        from ffcv.loader import Loader  # noqa: F401  (loads the compiled extension)
    except ImportError as err:  # also OSError-free: a missing .so surfaces as ImportError
        raise FfcvUnavailable(f"{INSTALL_HINT} [import failed: {err}]") from None
    return ffcv


def ffcv_available() -> bool:
    try:
        require_ffcv()
    except FfcvUnavailable:
        return False
    return True


def resolve_ffcv_dir(template: str, root: str, dataset: str) -> Path:
    """``data.ffcv_dir`` with ``{root}`` and ``{dataset}`` filled in, ``~`` expanded."""
    return Path(template.format(root=root, dataset=dataset)).expanduser()


class _Arrays:
    """Indexed dataset view for FFCV's writer: item i -> (uint8 CHW image, label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x.numpy(), y.numpy()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.x[i], int(self.y[i])


def prepare(data: ArrayDataset, out_dir: str | Path, num_workers: int = 1) -> dict[str, Path]:
    """Write ``train.beton`` and ``test.beton`` of ``data`` into ``out_dir``.

    Each file is written beside its final name and renamed into place, so a
    crash never leaves a half-written .beton where a trial would read it.
    """
    require_ffcv()
    from ffcv.fields import IntField, NDArrayField
    from ffcv.writer import DatasetWriter

    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for part, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        final = out / f"{part}.beton"
        tmp = out / f".{part}.beton.tmp"
        fields = {"image": NDArrayField(np.dtype("uint8"), tuple(x.shape[1:])), "label": IntField()}
        DatasetWriter(str(tmp), fields, num_workers=num_workers).from_indexed_dataset(_Arrays(x, y))
        tmp.replace(final)
        written[part] = final
    return written


class _EpochOrder:
    """Stands in for FFCV's traversal order: epoch e -> that epoch's index stream."""

    def __init__(self, streams):
        self.streams = streams

    def sample_order(self, epoch: int) -> np.ndarray:
        return self.streams(epoch)


class FfcvLoader(LoaderBase):
    """FFCV decodes + batches; crop/flip and normalisation happen on the device."""

    def __init__(
        self,
        data: ArrayDataset,
        split: Split,
        batch_size: int,
        device: torch.device,
        *,
        ffcv_dir: str | Path,
        augment: bool = True,
        unlabeled: bool = False,
        seed: int = 0,
        num_workers: int | None = None,
    ):
        require_ffcv()
        from ffcv.fields.decoders import IntDecoder, NDArrayDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.reader import Reader
        from ffcv.transforms import Squeeze, ToTensor

        super().__init__(
            data, split, batch_size, device, augment=augment, unlabeled=unlabeled, seed=seed
        )
        self.norm = Normalize(data, device)
        self.pad = data.pad if augment else 0
        path = Path(ffcv_dir).expanduser() / "train.beton"
        if not path.is_file():
            raise DataError(
                f"{path} not found — write it with: mixsweep data prepare {data.name} "
                f"--format ffcv --out {Path(ffcv_dir)}"
            )
        n_file = Reader(str(path)).num_samples
        if n_file != len(data.train_y):
            raise DataError(f"{path} holds {n_file} examples, {data.name} has "
                            f"{len(data.train_y)}: re-run mixsweep data prepare")
        self.n = self.steps_per_epoch * batch_size
        self._cache: dict[int, tuple] = {}
        # the trial's share of the node (cpus_per_trial, via make_loader), like the torch
        # loader's workers; FFCV needs at least one thread
        self.num_workers = max(1, default_workers() if num_workers is None else num_workers)
        pipelines = {"image": [NDArrayDecoder(), ToTensor()],
                     "label": [IntDecoder(), ToTensor(), Squeeze()]}
        self.loaders = []
        for stream in range(1 + unlabeled):
            ld = Loader(str(path), batch_size=batch_size,
                        num_workers=self.num_workers,
                        order=OrderOption.SEQUENTIAL, indices=self._stream(0, stream),
                        pipelines=pipelines, drop_last=False, os_cache=True)
            ld.traversal_order = _EpochOrder(lambda e, s=stream: self._stream(e, s))
            self.loaders.append(ld)

    def _stream(self, epoch: int, stream: int) -> np.ndarray:
        if epoch not in self._cache:
            self._cache = {epoch: epoch_streams(self.split, self.n, self.seed, epoch, self.unlabeled)}
        return self._cache[epoch][stream].numpy().astype(np.uint64)

    def _images(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.augment:
            p = self.pad
            padded = F.pad(x, (p, p, p, p)) if p else x
            dy, dx, fl = crop_flip_params(len(x), p, self.data.flip, g)
            x = crop_flip(padded, dy, dx, fl, self.data.shape[1:])
        return self.norm(x)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        # the same augmentation generators as the memory loader (streams 4, 5)
        g_lab, g_unl = epoch_generator(self.seed, epoch, 4), epoch_generator(self.seed, epoch, 5)
        for ld in self.loaders:
            ld.next_epoch = epoch
        iters = [iter(ld) for ld in self.loaders]
        for _ in range(self.steps_per_epoch):
            x, y = next(iters[0])
            xu = self._images(next(iters[1])[0], g_unl) if self.unlabeled else None
            # copy: FFCV reuses its batch buffers once the iterator moves on
            y = y.to(self.device, torch.int64, non_blocking=True, copy=True)
            yield Batch(self._images(x, g_lab), y, xu)
