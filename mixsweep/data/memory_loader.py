"""The ``memory`` loader (default): the whole training set on the training device.

Padded and normalised once (float32); each epoch draws a seeded permutation and
does random crop + flip as batched tensor ops (no worker processes). All randomness
of epoch e comes from generators seeded by (seed, e), so a resumed trial sees
exactly the batches an uninterrupted one would.

An epoch is ``ceil(len(train) / batch_size)`` steps whatever the labeled
fraction: the labeled stream cycles through the labeled subset, the unlabeled
stream through the pool.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mixsweep.data.base import (
    Batch,
    LoaderBase,
    Normalize,
    crop_flip,
    crop_flip_params,
    epoch_generator,
    epoch_streams,
    step_row,
)


class MemoryLoader(LoaderBase):
    """The whole dataset on the device; augmentation batched there."""

    def _setup(self) -> None:
        p = self.data.pad if self.augment else 0
        self.pad = p
        x = self.data.train_x.to(self.device)
        # Padded in pixel space (zeros, like torchvision's fill=0), then normalised once:
        # float32 costs 4x the memory of uint8 but measured faster per batch (mixsweep bench).
        self.train = Normalize(self.data, self.device)(
            torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        )
        self.labels = self.data.train_y.to(self.device)
        self.size = self.data.shape[1:]

    def _images(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        if not self.augment:
            return self.train[idx.to(self.device)]
        dy, dx, fl = crop_flip_params(len(idx), self.pad, self.data.flip, g)
        return crop_flip(self.train, dy, dx, fl, self.size, idx=idx)

    def draws(self, epoch: int) -> dict[str, torch.Tensor]:
        """Epoch ``epoch``'s randomness, drawn up front on the CPU: exactly what
        ``epoch()`` draws step by step (same generators, same order).

        Keys: ``lab`` / ``unl`` (steps, B) indices; with augmentation
        ``lab_dy, lab_dx, lab_fl`` (and ``unl_*``) (steps, B) crop offsets and flips.
        """
        n, steps = self.steps_per_epoch * self.batch_size, self.steps_per_epoch
        lab, unl = epoch_streams(self.split, n, self.seed, epoch, self.unlabeled)
        out = {"lab": lab.view(steps, -1)}
        if unl is not None:
            out["unl"] = unl.view(steps, -1)
        if self.augment:
            for name, g in (("lab", epoch_generator(self.seed, epoch, 4)),
                            ("unl", epoch_generator(self.seed, epoch, 5))):
                if name not in out:
                    continue
                dy, dx, fl = zip(*(crop_flip_params(self.batch_size, self.pad, self.data.flip, g)
                                   for _ in range(steps)), strict=True)
                out[f"{name}_dy"], out[f"{name}_dx"] = torch.stack(dy), torch.stack(dx)
                out[f"{name}_fl"] = torch.stack(fl)
        return out

    def batch_at(self, d: dict[str, torch.Tensor], i: int | torch.Tensor) -> Batch:
        """Step ``i``'s batch from ``draws`` already on the device; ``i`` may be a
        1-element device tensor (a step counter read inside a CUDA graph): no host sync."""
        def pick(key: str) -> torch.Tensor:
            return step_row(d[key], i)

        def images(name: str) -> torch.Tensor:
            idx = pick(name)
            if not self.augment:
                return self.train[idx]
            return crop_flip(self.train, pick(f"{name}_dy"), pick(f"{name}_dx"),
                             pick(f"{name}_fl"), self.size, idx=idx)

        lab = pick("lab")
        return Batch(images("lab"), self.labels[lab], images("unl") if "unl" in d else None)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        n, steps = self.steps_per_epoch * self.batch_size, self.steps_per_epoch
        lab, unl = epoch_streams(self.split, n, self.seed, epoch, self.unlabeled)
        # augmentation draws its own streams (4, 5): the index streams stay loader-independent
        g_lab, g_unl = epoch_generator(self.seed, epoch, 4), epoch_generator(self.seed, epoch, 5)
        lab = lab.view(steps, -1)
        unl = unl.view(steps, -1) if unl is not None else None
        for step in range(steps):
            x = self._images(lab[step], g_lab)
            y = self.labels[lab[step].to(self.device)]
            xu = self._images(unl[step], g_unl) if unl is not None else None
            yield Batch(x, y, xu)
