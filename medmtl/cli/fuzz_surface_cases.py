"""The hostile inputs of the surface fuzz suite (`medmtl.cli.fuzz_surfaces`): `build_cases(root,
data_yaml, rng)` writes them under `root` and returns one `SurfaceCase` per input. Random bytes
come from `rng`, so a seed gives the same files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from medmtl.cli.fuzz_surfaces import SurfaceCase

FIX_URL = "sqlite:///"  # every --storage line shows an example of a valid URL


def alias_bomb(levels: int = 9, width: int = 10) -> str:
    """A YAML of a few hundred bytes whose aliases expand to width**levels values."""
    rows = [f'a0: &a0 [{", ".join(["x"] * width)}]']
    rows += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(rows) + f"\nepochs: *a{levels - 1}\n"


def _config_cases(root: Path, data: Path, rng: random.Random) -> list[SurfaceCase]:
    d = root / "config"
    d.mkdir(parents=True)
    texts: dict[str, str | bytes] = {
        "alias_bomb": alias_bomb(), "self_alias": "a: &a [*a]\n",
        "deep": "model: " + "[" * 5000 + "]" * 5000 + "\n", "big": "# " + "x" * (2 << 20),
        "bytes": bytes(rng.randrange(256) for _ in range(400)), "latin1": "lr: 0.01 # \xe9\n"
        .encode("latin-1"), "nul": b"epochs: 3\x00\n", "list": "- 1\n- 2\n", "scalar": "42\n",
        "syntax": "epochs: [1, 2\nlr: : :\n", "unknown_key": "epochs_typo: 3\n",
        "inf": "epochs: .inf\n", "nan": "lr: .nan\n", "block_type": "model: 5\n",
        "int_key": "1: 2\n", "huge_int": "epochs: " + "9" * 5000 + "\n"}
    cases = []
    for name, text in texts.items():
        f = d / f"{name}.yaml"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        cases.append(SurfaceCase("config", name, ["train", "--data", str(data), "--config",
                                                  str(f), "--out", str(d / "out")],
                                 [str(f)], ["--config"], fresh_process=name == "alias_bomb"))
    for name, f in (("folder", d), ("missing", d / "nope.yaml")):
        cases.append(SurfaceCase("config", name, ["train", "--data", str(data), "--config",
                                                  str(f), "--out", str(d / "out")], [str(f)]))
    return cases


def _storage_cases(root: Path, data: Path) -> list[SurfaceCase]:
    d = root / "storage"
    d.mkdir(parents=True)
    yml = d / "notes.yaml"
    yml.write_text("a: 1\n")
    broken = d / "broken.db"  # SQLite's header, then garbage: only opening it tells
    broken.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)
    urls = {"garbage": "not a url", "empty": "", "missing_dir": f"sqlite:///{d}/no/dir/s.db",
            "closed_port": "postgresql://localhost:1/x", "mysql_closed": "mysql://localhost:1/x",
            "scheme": "mongodb://localhost/x", "redis": "redis://localhost:6379",
            "folder": f"sqlite:///{d}", "yaml_as_path": str(yml), "yaml_as_sqlite":
            f"sqlite:///{yml}", "memory": "sqlite://", "port_range":
            "postgresql://localhost:99999/x", "nul": "sqlite:///a\x00b.db", "long":
            "sqlite:///" + "x" * 5000, "bad_port": "postgresql://localhost:port/x",
            "no_scheme": "://", "folder_path": str(d), "broken_sqlite": f"sqlite:///{broken}"}
    return [SurfaceCase("storage", name, ["tune", "--data", str(data), "--methods", "fixed",
                                          "--trials", "1", "--seeds", "0", "--out",
                                          str(d / "out"), "--storage", url],
                        ["--storage"], [FIX_URL]) for name, url in urls.items()]


def _graph(path: Path, inputs: dict[str, list[int]], outputs: dict[str, list[int]],
           meta: str | None = None) -> Path:
    """A tiny valid ONNX model: each output is the mean of the first input over its last axes,
    tiled to the output's width."""
    import onnx
    from onnx import TensorProto, helper

    first = next(iter(inputs))
    rank = len(inputs[first])
    nodes = [helper.make_node("ReduceMean", [first], ["m"], axes=list(range(2, rank)),
                              keepdims=0)] if rank > 2 else [helper.make_node("Identity",
                                                                              [first], ["m"])]
    inits = []
    for name, shape in outputs.items():
        reps = f"reps_{name}"
        inits.append(helper.make_tensor(reps, TensorProto.INT64, [2], [1, max(1, shape[-1])]))
        nodes.append(helper.make_node("Tile", ["m1", reps], [name]))
    nodes.insert(1, helper.make_node("ReduceMean", ["m"], ["m1"], axes=[1], keepdims=1))
    graph = helper.make_graph(
        nodes, "foreign", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                           for n, s in inputs.items()],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs.items()],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "medmtl", meta
    onnx.save(model, str(path))
    return path


def _onnx_cases(root: Path, data: Path, rng: random.Random) -> list[SurfaceCase]:
    d = root / "onnx"
    d.mkdir(parents=True)
    meta = {"names": ["a"], "cls_names": ["A4C", "PLAX", "PSAX"], "imgsz": 64,
            "tasks": ["classify"]}
    img = {"images": [1, 3, 64, 64]}
    files = {
        "random_bytes": None, "empty": None, "folder": None, "missing": None,
        "foreign_io": _graph(d / "foreign_io.onnx", {"x": [1, 4]}, {"y": [1, 4]}),
        "images_rank2": _graph(d / "images_rank2.onnx", {"images": [1, 12]},
                               {"view_logits": [1, 3]}),
        "unknown_output": _graph(d / "unknown_output.onnx", img, {"features": [1, 8]}),
        "boxes_without_scores": _graph(d / "boxes_without_scores.onnx", img, {"boxes": [1, 4]}),
        "class_count": _graph(d / "class_count.onnx", img, {"view_logits": [1, 6]},
                              json.dumps(meta)),
        "bad_metadata": _graph(d / "bad_metadata.onnx", img, {"view_logits": [1, 3]},
                               "{not json"),
        "metadata_tasks": _graph(d / "metadata_tasks.onnx", img, {"view_logits": [1, 3]},
                                 json.dumps({**meta, "tasks": ["segment"]})),
        "no_metadata": _graph(d / "no_metadata.onnx", img, {"view_logits": [1, 3]})}
    (d / "random_bytes.onnx").write_bytes(bytes(rng.randrange(256) for _ in range(2048)))
    (d / "empty.onnx").write_bytes(b"")
    (d / "folder.onnx").mkdir()
    cases = [SurfaceCase("onnx", name, ["val", "--weights", str(d / f"{name}.onnx"), "--data",
                                        str(data), "--out", str(d / "out"), "--workers", "0"],
                         [str(d / f"{name}.onnx")]) for name in files]
    for name in ("random_bytes", "foreign_io"):  # predict reads .onnx the same way
        cases.append(SurfaceCase("onnx", f"predict_{name}", [
            "predict", "--source", str(data.parent), "--weights", str(d / f"{name}.onnx"),
            "--out", str(d / "pred")], [str(d / f"{name}.onnx")]))
    return cases


def fake_run(path: Path, method: str, names: list[str], cls_names: list[str],
             imgsz: int = 64) -> Path:
    """A finished run folder (weights/best.pt, metrics.json) of a freshly built `method` model."""
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.methods import build_config
    from medmtl.models import build_model
    from medmtl.models.checkpoint import checkpoint_dict

    cfg = build_config(method, {"imgsz": imgsz})
    cfg.model.num_classes, cfg.model.num_views = len(names), len(cls_names)
    save_checkpoint(checkpoint_dict(build_model(cfg.model), cfg, names, cls_names),
                    path / "weights" / "best.pt")
    (path / "metrics.json").write_text(json.dumps({"training": {"seconds": 1.0}}))
    return path


class _Code:
    """A pickled object that would call a function when unpickled without weights_only."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this checkpoint ran code",))


def _teacher_cases(root: Path, data: Path, rng: random.Random) -> list[SurfaceCase]:
    from medmtl.data.dataset_yaml import load_data_yaml

    spec = load_data_yaml(data)
    d = root / "teacher"
    names, views = list(spec.names), list(spec.cls_names)
    cls_run = fake_run(d / "classify_run", "classify", names, views)
    det_run = fake_run(d / "detect_run", "detect", names, views)
    empty = d / "empty_run"
    empty.mkdir()
    garbage = d / "garbage_run"
    (garbage / "weights").mkdir(parents=True)
    (garbage / "weights" / "best.pt").write_bytes(bytes(rng.randrange(256) for _ in range(999)))
    (garbage / "metrics.json").write_text("{}")
    code = d / "code_run"
    (code / "weights").mkdir(parents=True)
    torch.save({"model": _Code(), "config": {}}, code / "weights" / "best.pt")
    (code / "metrics.json").write_text("{}")
    teachers = {"classify_only": (str(cls_run), ["the teacher must have the tasks being "
                                                 "distilled"]),
                "detect_twice": (f"{det_run},{det_run}", ["add nothing"]),
                "empty_folder": (str(empty), []), "garbage_weights": (str(garbage), []),
                "pickled_code": (str(code), ["retrain"]), "a_file": (str(data), [])}
    base = ["train", "--data", str(data), "--method", "distill", "--imgsz", "64", "--epochs",
            "1", "--workers", "0", "--device", "cpu", "--batch", "4"]
    return [SurfaceCase("teacher", name, [*base, "--teacher", t, "--out", str(d / f"o_{name}")],
                        [t.split(",")[0]], must, ["weights_only", "safe_globals"])
            for name, (t, must) in teachers.items()]


def _csv_cases(root: Path, data: Path) -> list[SurfaceCase]:
    d = root / "csv"
    d.mkdir(parents=True)
    big = "x" * (200 << 10)
    corrections = {
        "huge_field": f"stem,field,old,new,note\na,view,A4C,PLAX,\"{big}\"\n",
        "unclosed_quote": "stem,field,old,new,note\na,view,A4C,PLAX,\"note\nb,view,A4C,PLAX,x\n",
        "stray_quote": "stem,field,old,new,note\na,view,A4C,PLAX,no\"te\"x\n",
        "nul_byte": "stem,field,old,new,note\na\x00b,view,A4C,PLAX,x\n",
        "huge_header": f"{big},field\n", "binary": None, "folder": None}
    cases = []
    for name, text in corrections.items():
        f = d / f"corr_{name}.csv"
        if name == "binary":
            f.write_bytes(bytes(range(128, 256)) * 4)
        elif name == "folder":
            f.mkdir()
        else:
            f.write_text(str(text))
        cases.append(SurfaceCase("corrections", name, ["audit", "--data", str(data),
                                                       "--corrections", str(f)], [str(f)]))
    trusted = {"huge_field": f"clip,view,reviewer,date,how\nc1,A4C,me,2024-01-01,\"{big}\"\n",
               "unclosed_quote": "clip,view,reviewer,date,how\nc1,A4C,me,2024-01-01,\"eye\n"
                                 "c2,PLAX,me,2024-01-01,eye\n"}
    for name, text in trusted.items():
        f = d / f"trusted_{name}.csv"
        f.write_text(text)
        cases.append(SurfaceCase("trusted", name, ["train", "--data", str(data), "--trusted",
                                                   str(f), "--out", str(d / "out")], [str(f)]))
    probs = d / "probs_huge_field.csv"  # out-of-sample probabilities of `audit --label-issues`
    probs.write_text(f"stem,A4C,PLAX,PSAX\n\"{big}\",0.2,0.3,0.5\n")
    cases.append(SurfaceCase("probs", "huge_field", ["audit", "--data", str(data),
                                                     "--label-issues", "--probs", str(probs),
                                                     "--out", str(d / "li")], [f"{probs}:2:"]))
    return cases


SPECS = {"inf": ("staged:freeze_trunk_epochs=inf", "freeze_trunk_epochs"),
         "huge": ("staged:freeze_trunk_epochs=1e30", "freeze_trunk_epochs"),
         "nan_alpha": ("shared:gradnorm:alpha=nan", "alpha"),
         "huge_alpha": ("shared:gradnorm:alpha=1e30", "alpha"),
         "negative": ("shared:gradnorm:alpha=-1", "alpha"),
         "inf_weight": ("shared:fixed:w_classify=inf", "w_classify"),
         "huge_lr": ("shared:fixed:lr=1e30", "lr"), "zero_lr": ("shared:fixed:lr=0", "lr"),
         "fraction": ("staged:freeze_trunk_epochs=2.5", "freeze_trunk_epochs"),
         "repeated": ("shared:gradnorm:alpha=1,alpha=2", "alpha"),
         "alias_twice": ("shared:cagrad:c=0.3,cagrad_c=0.2", "cagrad_c"),
         "bool_junk": ("shared:famo:reforward=maybe", "reforward"),
         "words": ("shared:dwa:temperature=warm", "temperature"),
         "long": ("shared:fixed:" + "w_classify=1," * 400, "characters"),
         "unicode_key": ("shared:gradnorm:" + "\u00e9" * 100 + "=1", "unknown key")}


def _spec_cases(root: Path, data: Path) -> list[SurfaceCase]:
    out = root / "spec"
    cases = [SurfaceCase("spec", name, ["train", "--data", str(data), "--method", spec,
                                        "--out", str(out / name)], [key], ["method spec"])
             for name, (spec, key) in SPECS.items()]
    cases.append(SurfaceCase("spec", "compare_inf", [
        "compare", "--data", str(data), "--methods", "fixed,staged:freeze_trunk_epochs=inf",
        "--out", str(out / "cmp")], ["--methods"], ["freeze_trunk_epochs"]))
    return cases


def _checkpoint_cases(root: Path, data: Path) -> list[SurfaceCase]:
    d = root / "checkpoint"
    d.mkdir(parents=True)
    evil = d / "code.pt"
    torch.save({"model": _Code(), "config": {}}, evil)  # pickled by torch, as a real one
    return [SurfaceCase("checkpoint", f"{cmd}_pickled_code", [cmd, "--weights", str(evil),
                                                              *extra],
                        [str(evil)], ["retrain", "never unpickle"],
                        ["weights_only", "safe_globals"])
            for cmd, extra in (("val", ["--data", str(data), "--out", str(d / "o")]),
                               ("export", []))]


def build_cases(root: Path, data: Path, rng: random.Random | None = None,
                surfaces: tuple[str, ...] | None = None) -> list[SurfaceCase]:
    """Every hostile input under `root`, against the dataset YAML `data` (its class names make
    the teacher runs); `surfaces` limits them (config, storage, onnx, teacher, csv, spec,
    checkpoint)."""
    rng = rng or random.Random(24)
    makers = {"config": lambda: _config_cases(root, data, rng),
              "storage": lambda: _storage_cases(root, data),
              "onnx": lambda: _onnx_cases(root, data, rng),
              "teacher": lambda: _teacher_cases(root, data, rng),
              "csv": lambda: _csv_cases(root, data), "spec": lambda: _spec_cases(root, data),
              "checkpoint": lambda: _checkpoint_cases(root, data)}
    return [c for k, make in makers.items() if surfaces is None or k in surfaces
            for c in make()]


__all__ = ["SPECS", "alias_bomb", "build_cases", "fake_run"]
