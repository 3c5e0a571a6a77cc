"""The training run's data: train, val and the optional held-out test split, their datasets, and
persistent loaders whose sample order is a pure function of (seed, epoch), sliced per rank under
data parallelism."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from medmtl.config import TrainConfig
from medmtl.data import MTLDataset, collate, load_data_yaml, scan_split
from medmtl.data.corrections import CorrectionError, load_corrections
from medmtl.data.dataset import ignore_stop_signals
from medmtl.data.dataset_yaml import DataError, split_source
from medmtl.data.splits import held_out_split, leakage_line, split_leakage
from medmtl.data.trusted import Corruption, conditioning_note, load_corruption, load_trusted
from medmtl.data.view_labels import (
    apply_trusted,
    apply_view_policy,
    describe_policy,
    describe_trusted,
)
from medmtl.distributed import Comm

CORRECTIONS_FILE = "corrections.csv"  # the run's copy of --corrections


class RunData:
    """Scans train and val (printing their summaries and problems), builds the datasets, and
    hands out one DataLoader per split for the whole run, so worker processes start once (not once
    per epoch); each pass only swaps the sampler's index list. Augmentation draws from
    (seed, epoch, index) through the dataset's shared epoch, never from worker seeds."""

    def __init__(self, cfg: TrainConfig, comm: Comm, device: torch.device, console: Console,
                 run_dir: Path) -> None:
        self.cfg, self.comm, self.device = cfg, comm, device
        spec = load_data_yaml(self._data_yaml(run_dir))
        self.names, self.cls_names = list(spec.names), list(spec.cls_names)
        if "classify" in cfg.model.tasks and not self.cls_names:
            raise DataError(f"{spec.yaml_path}: 'cls_names' is empty, and this run trains the view "
                            "task (classify); list the views or train --task detect")
        # corrections apply to every split (evaluation too); the view policy to train only
        self.corrections = load_corrections(cfg.corrections, spec) if cfg.corrections else None
        # trusted clip labels (train only) and the corruption matrix: checked before the scan
        trusted = load_trusted(cfg.trusted, self.cls_names) if cfg.trusted else None
        self.corruption: Corruption | None = load_corruption(cfg.corruption, self.cls_names) \
            if cfg.corruption else None
        self._corruption_record = corruption_record(self.corruption)
        self.trusted: dict[str, Any] | None = None
        scan = {"strict": cfg.strict, "decode": cfg.verify_images, "max_boxes": cfg.max_boxes,
                "corrections": self.corrections}
        self.train_index = scan_split(spec, "train", **scan)
        self.val_index = scan_split(spec, "val", **scan)
        # the held-out split: scored once, with the checkpoint chosen on val
        self.test_index = scan_split(spec, "test", **scan) \
            if cfg.test_split != "none" and "test" in spec.splits else None
        for name, idx in (("train", self.train_index), ("val", self.val_index),
                          ("test", self.test_index)):
            if idx is not None:
                print_summary(console, name, idx)
                if not idx.records:
                    s = idx.summary
                    raise DataError(f"{spec.yaml_path}: the {name} split "
                                    f"({split_source(spec, name)}) has no usable image "
                                    f"({s['images']} found, {s['images_skipped']} skipped, "
                                    f"{s['files_ignored']} other files); nothing to train on")
        # patients in both train and val: one line now, data.leakage in metrics.json
        self.leakage = split_leakage([r.path for r in self.train_index.records],
                                     [r.path for r in self.val_index.records], cfg.group_regex)
        line = leakage_line(self.leakage, cfg.data)
        if line:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        if self.corrections is not None:
            self._keep_corrections(run_dir, console)
        train_records, self.view_policy = apply_view_policy(
            self.train_index.records, cfg.view_labels, cfg.clip_regex)
        console.print(f"train: {describe_policy(self.view_policy)}")
        if trusted is not None:
            train_records = self._apply_trusted(train_records, trusted, console)
        if self._corruption_record is not None:
            console.print(f"train: {describe_corruption(self._corruption_record)}",
                          markup=False, highlight=False)
        self.train_set = MTLDataset(train_records, cfg.imgsz, train=True,
                                    augment=cfg.augment, cache=cfg.cache, seed=cfg.seed,
                                  strict=cfg.strict)
        self.val_set = MTLDataset(self.val_index.records, cfg.imgsz, train=False,
                                  augment=cfg.augment, cache=cfg.cache, seed=cfg.seed,
                                  strict=cfg.strict)
        self.test_set = None if self.test_index is None else MTLDataset(
            self.test_index.records, cfg.imgsz, train=False, augment=cfg.augment, cache=False,
            seed=cfg.seed, strict=cfg.strict)
        if comm.active and len(self.train_set) < cfg.batch:
            raise ValueError(f"{cfg.data}: {len(self.train_set)} training images, fewer than the "
                             f"global batch {cfg.batch}: lower --batch or --devices")
        self.local_batch = cfg.batch // comm.world_size
        self._loaders: dict[str, torch.utils.data.DataLoader] = {}

    def _data_yaml(self, run_dir: Path) -> str | Path:
        """The data YAML this run reads: the given one, or with `--test-split grouped` the one
        written to `<run>/split/` (train minus the held-out patients, the original val, and the
        held-out test list), by rank 0, deterministic for (data, fraction, split seed, regex)."""
        cfg = self.cfg
        if cfg.test_split != "grouped":
            return cfg.data
        out = run_dir / "split"
        if self.comm.is_main:
            held_out_split(cfg.data, out, cfg.test_fraction, cfg.split_seed, cfg.group_regex)
        self.comm.barrier()
        return out / "data.yaml"

    def _keep_corrections(self, run_dir: Path, console: Console) -> None:
        """Copy the corrections file into the run (rank 0); a resumed run must use the same."""
        corr = self.corrections
        assert corr is not None
        kept = run_dir / CORRECTIONS_FILE
        if kept.exists() and kept.resolve() != corr.path.resolve() \
                and hashlib.sha256(kept.read_bytes()).hexdigest() != corr.sha256:
            raise CorrectionError(f"{corr.path}: differs from {kept}, the corrections this run "
                                  "started with (sha256); resume with the same file")
        if self.comm.is_main and not kept.exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(corr.path, kept)
        applied = ", ".join(f"{s} {n}" for s, n in corr.applied.items()) or "none"
        console.print(f"corrections {corr.path}: {len(corr)} rows, sha256 {corr.sha256[:12]}; "
                      f"applied: {applied}; copied to {kept}")

    def _apply_trusted(self, records: list[Any], trusted: Any, console: Console) -> list[Any]:
        """--trusted: the training frames of trusted clips take the trusted view (copies); a
        trusted clip with no frame in train, val or test is a warning (--strict: an error)."""
        cfg = self.cfg
        others = [r for idx in (self.val_index, self.test_index) if idx is not None
                  for r in idx.records]
        records, self.trusted = apply_trusted(records, trusted, cfg.clip_regex, others)
        console.print(f"train: {describe_trusted(self.trusted)}", markup=False, highlight=False)
        if self.trusted["clips_unmatched"]:
            names = self.trusted["unmatched"]
            msg = (f"{cfg.trusted}: {len(names)} trusted clip(s) match no frame of the splits "
                   f"read (--clip-regex '{cfg.clip_regex}'): {', '.join(names[:5])}"
                   f"{', ...' if len(names) > 5 else ''}")
            if cfg.strict:
                raise DataError(f"{msg} (--strict)")
            console.print(f"warning: {msg}; counted in metrics.json data.trusted.clips_unmatched",
                          markup=False, highlight=False)
        return records

    @property
    def corruption_matrix(self) -> Any:
        """The (K, K) numpy corruption matrix of --corruption, or None."""
        return None if self.corruption is None else self.corruption.matrix

    def data_record(self) -> dict[str, Any]:
        """metrics.json's `data` block: the corrections, the view-label policy of the run, the
        trusted labels and the corruption matrix (--view-labels forward), the patients shared
        by train and val (`leakage`), and the view-imbalance remedy with the training counts it
        rests on."""
        return {"corrections": self.corrections.record() if self.corrections else None,
                "view_labels": dict(self.view_policy), "clip_regex": self.cfg.clip_regex,
                "trusted": None if self.trusted is None else dict(self.trusted),
                "corruption": self._corruption_record, "leakage": self.leakage,
                "view_balance": {"policy": self.cfg.loss.view_balance,
                                 "train_view_counts": dict(zip(self.cls_names,
                                                               self.view_counts(), strict=True))}}

    def view_counts(self) -> list[int]:
        """Training images per view class (after the view-label policy)."""
        return count_views([r.view for r in self.train_set.records], len(self.cls_names))

    def partial_labels(self) -> bool:
        """Whether some training image lacks boxes or a view label."""
        return any(not (r.det_labelled and r.has_view) for r in self.train_set.records)

    def batches_per_epoch(self) -> int:
        n, b = len(self.train_set), self.cfg.batch
        return n // b if n > b else 1  # a ragged last batch is dropped (BatchNorm)

    def epoch_order(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        if self.cfg.loss.view_balance == "sampler":
            return balanced_order([r.view for r in self.train_set.records],
                                  len(self.cls_names), g)
        return torch.randperm(len(self.train_set), generator=g).tolist()

    def rank_indices(self, order: list[int], first_batch: int, end_batch: int) -> list[int]:
        """This rank's samples of global batches [first_batch, end_batch): the rank-th slice of
        each (all of them in a single process)."""
        b, lb, r = self.cfg.batch, self.local_batch, self.comm.rank
        if not self.comm.active:
            return order[first_batch * b: end_batch * b]
        return [i for k in range(first_batch, end_batch)
                for i in order[k * b + r * lb: k * b + (r + 1) * lb]]

    def train_loader(self, epoch: int, start_batch: int) -> torch.utils.data.DataLoader:
        """The rest of `epoch` from global batch `start_batch` on (mid-epoch resume)."""
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        order = self.epoch_order(epoch)
        indices = self.rank_indices(order, start_batch, self.batches_per_epoch())
        return self._loader(self.train_set, indices, "train")

    def eval_loader(self, split: str = "val") -> torch.utils.data.DataLoader:
        """This rank's shard of an evaluation split (val or test): every world_size-th image."""
        comm = self.comm
        dataset = self.test_set if split == "test" else self.val_set
        if dataset is None:
            raise ValueError(f"this run has no {split} split")
        return self._loader(dataset, list(range(comm.rank, len(dataset), comm.world_size)),
                            split)

    def index(self, split: str) -> Any:
        return {"train": self.train_index, "val": self.val_index, "test": self.test_index}[split]

    def _loader(self, dataset: MTLDataset, indices: list[int], key: str,
                ) -> torch.utils.data.DataLoader:
        cfg, train = self.cfg, key == "train"
        loader = self._loaders.get(key)
        if loader is None:
            once = key == "test"  # read once, at the end: no worker processes kept for it
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=self.local_batch, sampler=_IndexSampler(), collate_fn=collate,
                num_workers=0 if once else cfg.workers, pin_memory=self.device.type == "cuda",
                drop_last=train and len(dataset) > cfg.batch,
                persistent_workers=cfg.workers > 0 and not once,
                worker_init_fn=ignore_stop_signals,
                generator=torch.Generator().manual_seed(cfg.seed * 100003 + (0 if train else 7)))
            self._loaders[key] = loader
        loader.sampler.indices = list(indices)
        return loader


def count_views(views: list[int | None], num_views: int) -> list[int]:
    """Images per view class (unlabelled images not counted)."""
    counts = [0] * num_views
    for v in views:
        if v is not None and 0 <= v < num_views:
            counts[v] += 1
    return counts


def balanced_order(views: list[int | None], num_views: int, g: torch.Generator) -> list[int]:
    """--view-balance sampler: an epoch of as many draws (with replacement) as images, each
    image with probability proportional to 1 / n_c of its view class c (every class drawn
    equally often); an image without a view label weighs as much as the average image."""
    counts = count_views(views, num_views)
    w = [1.0 / counts[v] if v is not None else 0.0 for v in views]
    seen = [x for x in w if x > 0]
    mean = sum(seen) / len(seen) if seen else 1.0
    weights = torch.tensor([x if x > 0 else mean for x in w], dtype=torch.float64)
    return torch.multinomial(weights, len(views), replacement=True, generator=g).tolist()


class _IndexSampler(torch.utils.data.Sampler[int]):
    """A sampler whose index list is replaced before each pass (persistent workers)."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def __iter__(self) -> Any:
        return iter(list(self.indices))

    def __len__(self) -> int:
        return len(self.indices)


def corruption_record(c: Corruption | None) -> dict[str, Any] | None:
    """metrics.json's `data.corruption`: the file, its sha256, the classes and the matrix."""
    if c is None or c.path is None:
        return None
    return {"path": str(c.path), "sha256": hashlib.sha256(c.path.read_bytes()).hexdigest(),
            "classes": list(c.classes), "matrix": c.matrix.tolist(),
            "condition_number": float(np.linalg.cond(c.matrix)),
            "warning": conditioning_note(c.matrix, list(c.classes))}


def describe_corruption(rec: dict[str, Any]) -> str:
    """One line: the corruption matrix the view loss is forward-corrected by."""
    rows = "; ".join(f"{c} -> " + " ".join(f"{x:.2f}" for x in row)
                     for c, row in zip(rec["classes"], rec["matrix"], strict=True))
    line = (f"view loss forward-corrected by {rec['path']} (sha256 {rec['sha256'][:12]}), "
            f"P(file's view | true view) in {'/'.join(rec['classes'])} order: {rows}")
    return line + (f"; warning: {rec['warning']}" if rec.get("warning") else "")


def print_summary(console: Console, split: str, index: Any) -> None:
    s = index.summary
    console.print(f"[bold]{split}[/]: " + ", ".join(f"{k} {v}" for k, v in s.items()
                                                    if not isinstance(v, dict)))
    problems = getattr(index, "problems", [])
    if problems:
        from medmtl.data import format_problems

        console.print(format_problems(problems, limit=10))


__all__ = ["CORRECTIONS_FILE", "RunData", "print_summary"]
