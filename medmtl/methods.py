"""Methods: the named presets that `--method` and `compare --methods` take, method specs, and
`build_config`.

A preset only sets model.arch / model.view_source / balancer.*; everything else is shared so that
methods are compared on the same data, budget and evaluation. Every registered balancer is also a
preset of its own (a shared backbone with that balancer), so a balancer plug-in needs no entry here.

A *spec* names any configuration: `arch:balancer[:key=value,...]`, e.g. `split2:gradnorm:alpha=0.5`,
`shared:cagrad:c=0.4`, `shared:fixed:w_classify=0.3`, or a preset with keys,
`preset:key=value[,...]`, e.g. `original:view_labels=clip-majority`. Its keys are the balancer's
options, a task weight `w_<task>` (the balancer's `weights`), `lr` and `view_labels` (the training
view-label policy: as-is | clip-majority | drop-inconsistent); an unknown key fails in one line
that lists the keys the spec takes. The spec string is the run's method (config.yaml's `method`),
so reports group and label runs by it and each variant gets a run folder of its own.

Every value is range-checked before anything else sees it (`SPEC_RANGES`; a balancer option by its
own field's bounds, capped at `MAX_SPEC_VALUE`): ``nan``, ``inf``, ``1e30`` or a fractional epoch
count fail in one line naming the key and the range it takes. A key may appear once, and a spec
is at most `MAX_SPEC_CHARS` characters, so the run folder named after it stays a valid name.
"""

from __future__ import annotations

import copy
import difflib
import re
from typing import Any

from medmtl.balancing import BALANCERS, balancer_class, option_keys, resolve_config
from medmtl.config import DISTILL, TASKS, TrainConfig, merge_dicts
from medmtl.data.view_labels import POLICIES
from medmtl.errors import PluginError, clip_text
from medmtl.models import ARCHS

MAX_SPEC_CHARS = 200  # a spec names a run folder (plus "-s<seed>"): well under 255 bytes
MAX_SPEC_VALUE = 1000.0  # the largest task weight or balancer option a spec may set
# key -> (low, high, whole number, low excluded); balancer options use their field's bounds
SPEC_RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "freeze_trunk_epochs": (0, 10_000, True, False),
    "epochs": (1, 10_000, True, False),
    "lr": (0, 10, False, True),
    "w_": (0, MAX_SPEC_VALUE, False, False),
}

PRESETS: dict[str, dict[str, Any]] = {
    "original": {"model": {"arch": "shared", "view_source": "neck8"},
                 "balancer": {"name": "fixed", "weights": {"detect": 1.0, "classify": 0.1}}},
    "fixed": {"model": {"arch": "shared"}, "balancer": {"name": "fixed"}},
    "gradnorm": {"model": {"arch": "shared"}, "balancer": {"name": "gradnorm"}},
    "uncertainty": {"model": {"arch": "shared"}, "balancer": {"name": "uncertainty"}},
    "dwa": {"model": {"arch": "shared"}, "balancer": {"name": "dwa"}},
    "pcgrad": {"model": {"arch": "shared"}, "balancer": {"name": "pcgrad"}},
    "cagrad": {"model": {"arch": "shared"}, "balancer": {"name": "cagrad"}},
    "famo": {"model": {"arch": "shared"}, "balancer": {"name": "famo"}},
    "dual": {"model": {"arch": "dual"}, "balancer": {"name": "fixed"}},
    "split2": {"model": {"arch": "split2"}, "balancer": {"name": "fixed"}},
    "auto": {"model": {"arch": "auto"}, "balancer": {"name": "fixed"}},
    "detach": {"model": {"arch": "detach"}, "balancer": {"name": "fixed"}},
    "detect": {"model": {"arch": "single", "tasks": ["detect"]}, "balancer": {"name": "fixed"}},
    "classify": {"model": {"arch": "single", "tasks": ["classify"]}, "balancer": {"name": "fixed"}},
    # hybrids (issue #13): they start from another run, `SOURCES` names which
    "staged": {"model": {"arch": "shared"}, "balancer": {"name": "gradnorm"}},
    "distill": {"model": {"arch": "shared"}, "balancer": {"name": "gradnorm"}},
}

# presets that start from another run: preset -> (config field, the method whose run of the same
# seed `compare` trains first and hands over); `train` takes the field as a flag
SOURCES: dict[str, tuple[str, str]] = {
    "staged": ("init_from", "dual"),
    "distill": ("teacher", "dual"),
}


ENTRY_POINT_GROUP = "medmtl.plugins"
_entry_points_loaded = False


def register_method(name: str, overrides: dict[str, Any],
                    source: tuple[str, str] | None = None) -> None:
    """Register a method preset: `overrides` of the config (model, balancer, `plugins`, ...) and,
    for a method that starts from another run, `source` = (config field, the method whose run of
    the same seed `compare` trains first and hands over), as `SOURCES`. A plug-in's file calls
    this beside its `@PLUGINS.register` (docs/extending.md)."""
    if name in PRESETS or name in BALANCERS or ":" in name or not name:
        raise ValueError(f"method {name!r} is registered already or is not a valid name")
    PRESETS[name] = copy.deepcopy(overrides)
    if source is not None:
        SOURCES[name] = source


def unregister_method(name: str) -> None:
    """Remove a method `register_method` added (tests clean up with this)."""
    PRESETS.pop(name, None)
    SOURCES.pop(name, None)


def load_entry_points() -> None:
    """Import, once per process, every module of the `medmtl.plugins` entry-point group: an
    installed package's methods and plug-ins register themselves when imported. A module that
    fails to import stops with one line naming it."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001  (any import failure: one line naming the package)
            raise PluginError(f"method plug-in {ep.name!r} ({ep.value}, entry point group "
                              f"{ENTRY_POINT_GROUP}) failed to import: {type(e).__name__}: "
                              f"{clip_text(str(e))}; fix or uninstall that package") from None


def base_preset(method: str) -> str | None:
    """The preset a method is or extends (`staged:alpha=0.5` -> `staged`); None for a spec
    arch:balancer."""
    if not is_spec(method):
        return method
    parts = method.split(":")
    return parts[0] if len(parts) > 1 and "=" in parts[1] else None


def method_source(method: str) -> tuple[str, str] | None:
    """(config field, source method) of a method that starts from another run, else None."""
    base = base_preset(method)
    return SOURCES.get(base) if base is not None else None


def presets() -> dict[str, dict[str, Any]]:
    """The presets above (and those plug-in packages register), then one per registered balancer
    that has none (in registry order)."""
    load_entry_points()
    out = dict(PRESETS)
    for name in BALANCERS.names():
        out.setdefault(name, {"model": {"arch": "shared"}, "balancer": {"name": name}})
    return out


def method_names() -> list[str]:
    return list(presets())


def is_spec(method: str) -> bool:
    return ":" in method


def parse_spec(spec: str) -> dict[str, Any]:
    """The config overrides of `arch:balancer[:key=value,...]` or `preset:key=value[,...]`
    (ValueError naming the problem)."""
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"method spec {clip_text(spec)!r}: {len(spec)} characters, more than the "
                         f"{MAX_SPEC_CHARS} a spec may have (it names the run folder)")
    parts = spec.split(":")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"method spec {spec!r}: expected arch:balancer[:key=value,...] or "
                         "preset:key=value[,...]")
    if "=" in parts[1]:  # a preset with keys, e.g. original:view_labels=clip-majority
        preset = presets().get(parts[0])
        if preset is None:
            raise ValueError(f"method spec {spec!r}: unknown preset {parts[0]!r}; known: "
                             f"{', '.join(presets())}")
        return _spec_keys(spec, copy.deepcopy(preset), parts[1:])
    arch, balancer = parts[0], parts[1]
    if arch not in ARCHS and arch != "auto":
        raise ValueError(f"method spec {spec!r}: unknown arch {arch!r}; known: "
                         f"{', '.join(ARCHS.usage())}")
    if balancer not in BALANCERS:
        raise ValueError(f"method spec {spec!r}: unknown balancer {balancer!r}; known: "
                         f"{', '.join(BALANCERS.names())}")
    return _spec_keys(spec, {"model": {"arch": arch}, "balancer": {"name": balancer}}, parts[2:])


def _spec_keys(spec: str, over: dict[str, Any], parts: list[str]) -> dict[str, Any]:
    """`over` updated by the spec's `key=value` items."""
    balancer = over["balancer"]["name"]
    options = balancer_class(balancer).Options
    opts = option_keys(options)
    weights: dict[str, float] = {}
    seen: dict[str, str] = {}
    for item in (x for part in parts for x in part.split(",") if x.strip()):
        key, eq, value = (x.strip() for x in item.partition("="))
        allowed = sorted({*opts, *(f"w_{t}" for t in (*TASKS, DISTILL)), "lr", "view_labels",
                          "freeze_trunk_epochs", "epochs"})
        if not eq or key not in allowed:
            raise ValueError(f"method spec {spec!r}: unknown key {clip_text(key)!r}; {balancer} "
                             f"specs take {', '.join(allowed)}")
        target = key if key in ("lr", "view_labels", "freeze_trunk_epochs", "epochs") or \
            key.startswith("w_") else opts[key]
        if target in seen:
            both = f"{key} is given twice" if seen[target] == key else \
                f"{seen[target]} and {key} set the same option"
            raise ValueError(f"method spec {spec!r}: {both}; give each key once")
        seen[target] = key
        if key == "view_labels":
            if value not in POLICIES:
                raise ValueError(f"method spec {spec!r}: view_labels={value!r}; expected one of "
                                 f"{', '.join(POLICIES)}")
            over["view_labels"] = value
            continue
        number = _spec_value(spec, key, value, options.model_fields.get(opts.get(key, "")))
        if key.startswith("w_"):
            weights[key[2:]] = number
        elif key in ("freeze_trunk_epochs", "epochs"):
            over[key] = int(number)
        elif key == "lr":
            over["lr"] = number
        else:
            over["balancer"][opts[key]] = number  # the field's own name, not an alias
    if weights:
        base = over["balancer"].get("weights") or {}
        over["balancer"]["weights"] = {**{t: 1.0 for t in TASKS}, **base, **weights}
    return over


def _bounds(key: str, field: Any) -> tuple[float, float, bool, bool]:
    """(low, high, whole number, low excluded) a spec value of `key` must fit; a balancer
    option's from its field's ``ge``/``gt``/``le``/``lt`` (high capped at `MAX_SPEC_VALUE`)."""
    if key in SPEC_RANGES or key.startswith("w_"):
        return SPEC_RANGES.get(key) or SPEC_RANGES["w_"]
    lo, hi, lo_open = -MAX_SPEC_VALUE, MAX_SPEC_VALUE, False
    for m in getattr(field, "metadata", ()):
        if getattr(m, "ge", None) is not None:
            lo = float(m.ge)
        if getattr(m, "gt", None) is not None:
            lo, lo_open = float(m.gt), True
        for attr in ("le", "lt"):
            if getattr(m, attr, None) is not None:
                hi = min(hi, float(getattr(m, attr)))
    return lo, hi, getattr(field, "annotation", None) is int, lo_open


def _spec_value(spec: str, key: str, value: str, field: Any) -> float:
    """The number a spec gives `key`, within its range (`_bounds`); a one-line ValueError naming
    the key and the range otherwise (nan, inf, 1e30, 2.5 epochs, words)."""
    if getattr(field, "annotation", None) is bool:
        flags = {"true": 1.0, "1": 1.0, "yes": 1.0, "on": 1.0,
                 "false": 0.0, "0": 0.0, "no": 0.0, "off": 0.0}
        if value.lower() not in flags:
            raise ValueError(f"method spec {clip_text(spec)!r}: {key}={clip_text(value)!r}: {key} "
                             "takes true or false")
        return flags[value.lower()]
    lo, hi, whole, lo_open = _bounds(key, field)
    what = "a whole number" if whole else "a number"
    rng = f"{what} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"method spec {clip_text(spec)!r}: {key}={clip_text(value)!r} is not a "
                         f"number; {key} takes {rng}") from None
    ok = lo < number <= hi if lo_open else lo <= number <= hi  # False for nan
    if not ok or (whole and not number.is_integer()):
        raise ValueError(f"method spec {clip_text(spec)!r}: {key}={clip_text(value)} is out of "
                         f"range; {key} takes {rng}")
    return number


def split_methods(text: str) -> list[str]:
    """`--methods` text -> methods. Commas separate methods; a comma-separated `key=value` after a
    spec continues that spec (`shared:fixed:w_detect=1,w_classify=0.3,dual` is two methods)."""
    out: list[str] = []
    for piece in (p.strip() for p in text.split(",")):
        if not piece:
            continue
        if out and "=" in piece and ":" not in piece and is_spec(out[-1]):
            out[-1] = f"{out[-1]},{piece}"
        else:
            out.append(piece)
    return out


def run_name(method: str) -> str:
    """A folder-safe name for a method (specs hold ':' and ',')."""
    return re.sub(r"[^A-Za-z0-9._=+@-]+", "_", method)


def check_method(method: str) -> None:
    """Raise (KeyError / ValueError, one line) unless `method` is a preset or a valid spec."""
    if is_spec(method):
        parse_spec(method)
    elif method not in presets():
        close = difflib.get_close_matches(method.lower(), list(presets()), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise KeyError(f"unknown method {clip_text(method)!r}; {hint}known: "
                       f"{', '.join(presets())}, or a spec arch:balancer[:key=value,...]")


def build_config(method: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults <- preset or spec (method) <- overrides (nested dicts), validated, with the
    balancer's options resolved (its defaults filled in, so config.yaml records every value the
    run used)."""
    data: dict[str, Any] = TrainConfig().model_dump()
    if method is not None:
        check_method(method)
        data = merge_dicts(data, parse_spec(method) if is_spec(method) else presets()[method])
        data["method"] = method
    if overrides:
        data = merge_dicts(data, overrides)
        if method is not None and is_spec(method) and "epochs" in (spec := parse_spec(method)):
            data["epochs"] = spec["epochs"]  # a budget control (fixed:epochs=16) keeps its own
    cfg = TrainConfig.model_validate(data)
    cfg.balancer = resolve_config(cfg.balancer)
    need = method_source(method) if method is not None else None
    if need is not None and not getattr(cfg, need[0]):
        flag = "--" + need[0].replace("_", "-")
        raise ValueError(f"method {method!r} starts from a finished run: give {flag} RUN_DIR "
                         f"(e.g. a {need[1]} run), or run it in `medmtl compare`, which trains "
                         f"the {need[1]} run of each seed first")
    return cfg


__all__ = ["ENTRY_POINT_GROUP", "PRESETS", "SOURCES", "base_preset", "build_config",
           "check_method", "is_spec", "load_entry_points", "method_names", "method_source",
           "parse_spec", "presets", "register_method", "run_name", "split_methods",
           "unregister_method"]
