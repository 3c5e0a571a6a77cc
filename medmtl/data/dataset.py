"""`MTLDataset` (decode -> letterbox -> [cache] -> augment), `collate` and `build_dataloader`.

Augmentation is deterministic: each sample draws from ``np.random.default_rng([seed, epoch,
index])``, so results do not depend on the number of workers. ``set_epoch`` writes the epoch into
a shared-memory tensor that persistent workers read as well (call it before iterating).
"""

from __future__ import annotations

import random
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from medmtl.config import AugmentConfig
from medmtl.data.dataset_yaml import DataError
from medmtl.data.labels import ImageRecord
from medmtl.data.transforms import (
    PAD_VALUE,
    augment_colour,
    hflip,
    letterbox,
    letterbox_boxes,
    letterbox_params,
    load_image,
    mosaic4,
    random_affine,
)


class MTLDataset(Dataset[dict[str, Any]]):
    """Samples for both tasks.

    ``train=False``: letterbox only. ``train=True``: optional mosaic, random scale/translate,
    left-right flip, HSV and brightness/contrast, all from ``augment`` (None: no augmentation).
    ``cache=True`` decodes and letterboxes every image once, up front, into one uint8 array
    (shared copy-on-write with forked workers). ``det_mask``/``view_mask`` come from the record
    (detection is labelled by boxes, or by "none": a negative frame):
    an augmented labelled image whose boxes all left the frame keeps ``det_mask=True`` (a negative).
    A mosaic uses four images with boxes and, when the first has a view, the same view.
    """

    def __init__(self, records: Sequence[ImageRecord], imgsz: int, train: bool = False,
                 augment: AugmentConfig | None = None, cache: bool = False,
                 names: Sequence[str] = (), cls_names: Sequence[str] = (), seed: int = 0,
                 strict: bool = False) -> None:
        self.records = list(records)
        self.imgsz = int(imgsz)
        self.train = bool(train)
        self.augment = augment if train else None
        self.names = list(names)
        self.cls_names = list(cls_names)
        self.seed = int(seed)
        self.strict = bool(strict)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        # samples whose image failed to decode (skipped: grey, no labels), counted over workers
        self._unreadable = torch.zeros((), dtype=torch.int64).share_memory_()
        self._bad: set[int] = set()  # this process's failed indices
        self._cache: np.ndarray | None = None
        if self.augment is not None and self.augment.mosaic > 0:
            self._pool: dict[int | None, list[int]] = {None: []}
            for i, r in enumerate(self.records):
                if r.has_boxes:
                    self._pool[None].append(i)
                    if r.view is not None:
                        self._pool.setdefault(r.view, []).append(i)
        if cache:
            self._fill_cache()

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def _fill_cache(self) -> None:
        arr = np.empty((len(self.records), self.imgsz, self.imgsz, 3), dtype=np.uint8)

        def work(i: int) -> None:
            arr[i] = self._decode(i)

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(self.records)))) as ex:
            list(ex.map(work, range(len(self.records))))
        self._cache = arr

    @property
    def unreadable(self) -> int:
        """Sample loads skipped so far because the image did not decode (all workers)."""
        return int(self._unreadable.item())

    def _read(self, i: int) -> np.ndarray:
        """The decoded image; on a decode error `DataError` naming the file (``strict``), else a
        grey image of the record's size, the sample masked out of both losses and counted."""
        rec = self.records[i]
        try:
            return load_image(rec.path)
        except DataError as e:
            if self.strict:
                raise
            self._bad.add(i)
            self._unreadable.add_(1)
            print(f"warning: {e}; sample skipped (no labels), counted in history.csv "
                  "unreadable_samples (--strict stops instead)", file=sys.stderr)
            return np.full((rec.height, rec.width, 3), PAD_VALUE, dtype=np.uint8)

    def _decode(self, i: int) -> np.ndarray:
        return letterbox(self._read(i), self.imgsz)[0]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float, float]]:
        """Letterboxed image, boxes in letterboxed pixels, classes, (scale, pad_x, pad_y)."""
        rec = self.records[i]
        if self._cache is not None:
            img = self._cache[i]
            lb = letterbox_params(rec.height, rec.width, self.imgsz)[:3]
        else:
            img, *params = letterbox(self._read(i), self.imgsz)
            lb = (params[0], params[1], params[2])
        if i in self._bad:
            return img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), lb
        boxes = letterbox_boxes(rec.boxes.astype(np.float64), *lb).astype(np.float32)
        return img, boxes, rec.classes.copy(), lb

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _mosaic(self, index: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        rec = self.records[index]
        if not rec.has_boxes:
            return None
        pool = self._pool.get(rec.view, [])
        if not pool:
            return None
        others = rng.choice(np.asarray(pool), size=3, replace=len(pool) < 3).tolist()
        tiles = [self.load(j)[:3] for j in [index, *others]]
        return mosaic4(tiles)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        img, boxes, classes, lb = self.load(index)
        aug = self.augment
        if aug is not None:
            rng = self._rng(index)
            if aug.mosaic > 0 and rng.random() < aug.mosaic:
                mixed = self._mosaic(index, rng)
                if mixed is not None:
                    img, boxes, classes = mixed
            if aug.scale > 0 or aug.translate > 0:
                img, boxes, classes = random_affine(img, boxes, classes, rng, aug.scale,
                                                    aug.translate)
            if aug.fliplr > 0 and rng.random() < aug.fliplr:
                img, boxes = hflip(img, boxes)
            img = augment_colour(img, rng, aug.hsv_h, aug.hsv_s, aug.hsv_v, aug.brightness,
                                 aug.contrast)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        ok = index not in self._bad
        return {
            "image": image,
            "boxes": torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4)),
            "box_classes": torch.from_numpy(np.asarray(classes, np.int64).reshape(-1)),
            "det_mask": rec.det_labelled and ok,
            "view": -1 if rec.view is None or not ok else int(rec.view),
            "view_mask": rec.view is not None and ok,
            "view_trusted": rec.view_trusted and rec.view is not None and ok,
            "meta": {"image_id": rec.image_id, "path": str(rec.path),
                     "orig_size": (rec.height, rec.width), "letterbox": lb},
        }


def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples into the batch dict of docs/ARCHITECTURE.md (boxes padded to the batch max)."""
    b = len(samples)
    m = max((len(s["boxes"]) for s in samples), default=0)
    boxes = torch.zeros((b, m, 4), dtype=torch.float32)
    box_classes = torch.zeros((b, m), dtype=torch.int64)
    box_mask = torch.zeros((b, m), dtype=torch.bool)
    for i, s in enumerate(samples):
        n = len(s["boxes"])
        if n:
            boxes[i, :n] = s["boxes"]
            box_classes[i, :n] = s["box_classes"]
            box_mask[i, :n] = True
    return {
        "images": torch.stack([s["image"] for s in samples]) if samples
        else torch.zeros((0, 3, 0, 0), dtype=torch.uint8),
        "boxes": boxes,
        "box_classes": box_classes,
        "box_mask": box_mask,
        "det_mask": torch.tensor([bool(s["det_mask"]) for s in samples], dtype=torch.bool),
        "view": torch.tensor([int(s["view"]) for s in samples], dtype=torch.int64),
        "view_mask": torch.tensor([bool(s["view_mask"]) for s in samples], dtype=torch.bool),
        "view_trusted": torch.tensor([bool(s.get("view_trusted", False)) for s in samples],
                                     dtype=torch.bool),
        "meta": [s["meta"] for s in samples],
    }


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A data-loader worker's `worker_init_fn`: ignore SIGTERM and SIGINT. A scheduler's stop
    (SLURM's preemption, ``kill -- -PGID``) and Ctrl-C reach every process of the group; a worker
    that died of it would fail the step with a DataLoader error, instead of the main process
    finishing the step, saving weights/last.pt and shutting its workers down (a tuning trial
    stopped so is resumed, not counted as failed). Workers still exit when the main process dies
    (PyTorch's watchdog)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def seed_worker(worker_id: int) -> None:
    """Seed Python/NumPy from the worker's torch seed; one OpenCV thread per worker; stop signals
    ignored (`ignore_stop_signals`)."""
    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)
    cv2.setNumThreads(0)
    ignore_stop_signals(worker_id)


def build_dataloader(dataset: Dataset[Any], batch: int, shuffle: bool, workers: int, seed: int,
                     pin_memory: bool, drop_last: bool = False,
                     sampler: Sampler[Any] | None = None) -> DataLoader[Any]:
    """DataLoader with `collate`, a seeded generator and persistent workers when ``workers > 0``.

    Workers are forked on Linux so that a cached dataset is shared, not copied."""
    g = torch.Generator()
    g.manual_seed(int(seed))
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs.update(persistent_workers=True, worker_init_fn=seed_worker, prefetch_factor=2)
        if sys.platform.startswith("linux"):
            kwargs["multiprocessing_context"] = "fork"
    return DataLoader(dataset, batch_size=batch, shuffle=shuffle and sampler is None,
                      sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=drop_last, collate_fn=collate, generator=g, **kwargs)
