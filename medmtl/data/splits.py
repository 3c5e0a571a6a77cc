"""Patient-grouped splits: a group (patient) id per file, whole groups to one side.

`split_by_group` re-splits train+val into patient-disjoint train/val lists (`medmtl split`);
`held_out_split` carves a patient-grouped test split out of the training images for a run
(`--test-split grouped`), so the checkpoint chosen on val is scored on images, and patients, that
neither training nor selection saw. Both are deterministic for a seed and write plain file lists
(no copies) plus a data.yaml that points at them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from medmtl.data.dataset_yaml import DataError, DatasetSpec, list_split_images, load_data_yaml
from medmtl.data.groups import DEFAULT_CLIP_REGEX, DEFAULT_PATIENT_REGEX, clip_of, patient_of

DEFAULT_GROUP_REGEX = DEFAULT_PATIENT_REGEX


def group_of(path: str | Path, group_regex: str = DEFAULT_GROUP_REGEX) -> str:
    """Group (patient) id from a file name: the regex's first group, else the whole stem."""
    return patient_of(path, group_regex)


def grouped_partition(paths: Sequence[Path], fraction: float, seed: int, group_regex: str,
                      where: str) -> tuple[list[Path], list[Path], int, int]:
    """(kept, held, kept groups, held groups): whole groups go to `held` until it holds about
    `fraction` of the images. Groups are sorted, permuted by `np.random.default_rng(seed)`, and
    each is held out when that brings the held count closer to the target; at least one group
    stays on each side. `where` names the data in errors."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in (0, 1), got {fraction}")
    if not paths:
        raise DataError(f"{where}: no images to split")
    by_group: dict[str, list[Path]] = {}
    for p in sorted(paths):
        by_group.setdefault(group_of(p, group_regex), []).append(p)
    if len(by_group) < 2:
        raise DataError(f"{where}: only {len(by_group)} group(s) with regex {group_regex!r}; "
                        "cannot split by group")
    order = sorted(by_group)
    perm = np.random.default_rng(seed).permutation(len(order))
    target = fraction * len(paths)
    held_groups: list[str] = []
    n_held = 0
    for i in perm.tolist():
        g = order[i]
        n = len(by_group[g])
        if abs(n_held + n - target) < abs(n_held - target) and len(held_groups) < len(order) - 1:
            held_groups.append(g)
            n_held += n
    if not held_groups:  # every group larger than twice the target: take the smallest
        held_groups.append(min(order, key=lambda g: (len(by_group[g]), g)))
    held_set = set(held_groups)
    kept = sorted(p for g in order if g not in held_set for p in by_group[g])
    held = sorted(p for g in sorted(held_set) for p in by_group[g])
    return kept, held, len(order) - len(held_set), len(held_set)


def write_file_lists(out: Path, lists: dict[str, list[Path]], spec: DatasetSpec,
                     extra: dict[str, Path], header: str) -> Path:
    """``<out>/<name>.txt`` per list (absolute image paths) and ``<out>/data.yaml`` pointing at
    them (``path``: the data root, ``extra`` splits as given, ``names``, ``cls_names``)."""
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"path": str(spec.root)}
    for name, paths in lists.items():
        (out / f"{name}.txt").write_text("".join(f"{p}\n" for p in paths), encoding="utf-8")
        data[name] = str(out / f"{name}.txt")
    data.update({k: str(v) for k, v in extra.items()})
    data.update(names=list(spec.names), cls_names=list(spec.cls_names))
    yml = out / "data.yaml"
    yml.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return yml


def crossing_clips(a: Sequence[Path], b: Sequence[Path],
                   clip_regex: str = DEFAULT_CLIP_REGEX) -> list[str]:
    """Clip ids (`clip_of`) with frames in both lists: none when the patient regex keeps clips
    whole, as it should."""
    return sorted({clip_of(p, clip_regex) for p in a} & {clip_of(p, clip_regex) for p in b})


def split_leakage(train: Sequence[str | Path], val: Sequence[str | Path],
                  group_regex: str = DEFAULT_GROUP_REGEX) -> dict[str, Any]:
    """Patients (`group_of`) with images in both train and val: metrics.json's
    ``data.leakage``. ``val_images_shared``: the val images of those patients (scored on a
    patient the model trained on, so the val scores flatter it)."""
    tg = Counter(group_of(p, group_regex) for p in train)
    vg = Counter(group_of(p, group_regex) for p in val)
    shared = sorted(set(tg) & set(vg))
    return {"group_regex": group_regex, "train_patients": len(tg), "val_patients": len(vg),
            "shared_patients": len(shared), "val_images": sum(vg.values()),
            "val_images_shared": sum(vg[g] for g in shared),
            "train_images_shared": sum(tg[g] for g in shared), "examples": shared[:5]}


def leakage_line(rec: dict[str, Any] | None, data: str | Path) -> str | None:
    """The one warning line of a `split_leakage` record (None when no patient is shared)."""
    if not rec or not rec.get("shared_patients"):
        return None
    n, v = rec["shared_patients"], rec["val_images"]
    pct = 100.0 * rec["val_images_shared"] / v if v else 0.0
    return (f"warning: patient leakage: {n} of {rec['val_patients']} val patient(s) also have "
            f"training images ({rec['val_images_shared']} of {v} val images, {pct:.0f} %; "
            f"group regex {rec['group_regex']!r} on the file name), so the val scores flatter "
            f"the model; `medmtl split --data {data} --out DIR` writes a patient-grouped split "
            "(DIR/data.yaml)")


def data_leakage(yaml_path: str | Path, group_regex: str = DEFAULT_GROUP_REGEX
                 ) -> dict[str, Any] | None:
    """`split_leakage` of a data YAML's train and val lists (file names only: nothing is
    decoded); None without both splits."""
    spec = load_data_yaml(yaml_path)
    if "train" not in spec.splits or "val" not in spec.splits:
        return None
    return split_leakage(list_split_images(spec, "train"), list_split_images(spec, "val"),
                         group_regex)


def split_by_group(yaml_path: str | Path, val_fraction: float = 0.2, seed: int = 0,
                   out_dir: str | Path = "splits", group_regex: str = DEFAULT_GROUP_REGEX,
                   source_splits: tuple[str, ...] = ("train", "val"),
                   clip_regex: str = DEFAULT_CLIP_REGEX) -> Path:
    """Pool ``source_splits``, give whole groups (patients) to val until ~``val_fraction`` of the
    images, write ``train.txt``/``val.txt`` (absolute image paths) and ``data.yaml`` (``path``: the
    data root, ``train``/``val``/``test``: absolute paths, ``names``, ``cls_names``); return it.
    The YAML's header counts the clips (``clip_regex``) with frames on both sides (0 expected)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    spec = load_data_yaml(yaml_path)
    pooled: set[Path] = set()
    for s in source_splits:
        pooled |= set(list_split_images(spec, s))
    if not pooled:
        raise DataError(f"{spec.yaml_path}: no images in splits {source_splits}")
    train, val, n_train_g, n_val_g = grouped_partition(sorted(pooled), val_fraction, seed,
                                                       group_regex, str(spec.yaml_path))
    extra = {"test": spec.splits["test"]} if "test" in spec.splits else {}
    header = (f"# patient-grouped split of {spec.yaml_path} (seed {seed}, val_fraction "
              f"{val_fraction}, group regex {group_regex!r}): {len(train)} train / {len(val)} val "
              f"images, {n_train_g} / {n_val_g} groups; clips in both (clip regex "
              f"{clip_regex!r}): {len(crossing_clips(train, val, clip_regex))}\n")
    return write_file_lists(Path(out_dir).expanduser().resolve(), {"train": train, "val": val},
                            spec, extra, header)


def held_out_split(yaml_path: str | Path, out_dir: str | Path, fraction: float = 0.2,
                   seed: int = 0, group_regex: str = DEFAULT_GROUP_REGEX) -> Path:
    """A patient-grouped test split taken from the training images: writes ``train.txt`` (the
    rest), ``test.txt`` and a ``data.yaml`` whose val is the original val; returns that YAML.
    Patients of the held-out test images that also appear in val are reported in its header."""
    spec = load_data_yaml(yaml_path)
    images = list_split_images(spec, "train")
    train, test, n_train_g, n_test_g = grouped_partition(images, fraction, seed, group_regex,
                                                         f"{spec.yaml_path} (train split)")
    val_groups = {group_of(p, group_regex) for p in list_split_images(spec, "val")}
    shared = sorted({group_of(p, group_regex) for p in test} & val_groups)
    header = (f"# held-out test split from the training images of {spec.yaml_path} (seed {seed}, "
              f"fraction {fraction}, group regex {group_regex!r}): {len(train)} train / "
              f"{len(test)} test images, {n_train_g} / {n_test_g} groups; test groups also in "
              f"val: {len(shared)}\n")
    return write_file_lists(Path(out_dir).expanduser().resolve(), {"train": train, "test": test},
                            spec, {"val": spec.splits["val"]}, header)


__all__ = ["DEFAULT_GROUP_REGEX", "crossing_clips", "data_leakage", "group_of",
           "grouped_partition", "held_out_split", "leakage_line", "split_by_group",
           "split_leakage", "write_file_lists"]
