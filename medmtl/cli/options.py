"""Command-line options generated from the config models: one source of truth.

Every field of `TrainConfig` (and of its model / loss / augment / balancer blocks) with `cli=True`
becomes a typer option whose help is the field's description, whose `--help` panel is its `panel`,
and whose flag is `--<field-name>` or the field's `flag`. Every registered balancer's `Options`
add `--<balancer>-<field>` flags (or the field's `flag`, e.g. GradNorm's `--alpha`). A command takes
them with `@with_config_options(...)` and a `**config_values` parameter, and turns the values it got
into nested config overrides with `config_overrides`.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from medmtl.balancing import BALANCERS, balancer_class
from medmtl.config import IMGSZ_HELP, TrainConfig, merge_dicts

# config blocks -> their path in TrainConfig and the default panel of their fields
_BLOCKS: dict[str, str] = {"model": "Model", "loss": "Loss", "augment": "Augmentation",
                           "balancer": "Method"}


@dataclass(frozen=True)
class ConfigOption:
    """One generated flag: where its value goes in the config, and how it is parsed."""

    param: str  # the Python parameter name in the command function
    flag: str
    path: tuple[str, ...]  # ("model", "arch"), ("epochs",), ("balancer", "alpha")
    kind: str  # scalar | bool | pairs (k=v,...) | floats (a,b,...)
    panel: str
    help: str
    default: Any
    balancer: str | None = None  # the balancer whose option this is
    choices: tuple[str, ...] | None = None

    def parse(self, value: Any) -> Any:
        if isinstance(value, enum.Enum):
            return value.value
        if self.kind == "pairs":
            out: dict[str, float] = {}
            for part in str(value).split(","):
                k, _, v = part.partition("=")
                try:
                    out[k.strip()] = float(v)
                except ValueError:
                    raise typer.BadParameter(f"expected name=number pairs, got {part!r}",
                                             param_hint=self.flag) from None
            return out
        if self.kind == "floats":
            try:
                return [float(x) for x in str(value).split(",") if x.strip()]
            except ValueError:
                raise typer.BadParameter(f"expected comma-separated numbers, got {value!r}",
                                         param_hint=self.flag) from None
        return value

    def annotation(self) -> Any:
        shown = self.default
        if isinstance(shown, dict):
            shown = ",".join(f"{k}={v:g}" for k, v in shown.items())
        elif isinstance(shown, bool):
            shown = self.flag[2:] if shown else f"no-{self.flag[2:]}"
        default = "from --method" if self.panel == "Method" and self.balancer is None else shown
        text = f"{self.help} \\[default: {default}]" if default not in (None, "") else self.help
        if self.balancer:
            text = f"{text} ({self.balancer} only)"
        kw: dict[str, Any] = {"help": text, "rich_help_panel": self.panel, "show_default": False}
        if self.kind == "bool":
            return Annotated[bool | None, typer.Option(f"{self.flag}/--no-{self.flag[2:]}", **kw)]
        if self.choices:  # typer lists an Enum's values as the choices
            choice = enum.Enum(f"{self.param}_choice", [(c, c) for c in self.choices], type=str)
            return Annotated[choice | None, typer.Option(self.flag, **kw)]
        py = str if self.kind in ("pairs", "floats") else self._scalar_type
        return Annotated[py | None, typer.Option(self.flag, **kw)]

    @property
    def _scalar_type(self) -> type:
        return type(self.default) if isinstance(self.default, int | float) else str


def _scalar(annotation: Any) -> tuple[str, tuple[str, ...] | None]:
    """(kind, choices) of a field's annotation; kind "skip" for what the CLI cannot express."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "scalar", tuple(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _scalar(args[0])
    if annotation is bool:
        return "bool", None
    if annotation in (int, float, str):
        return "scalar", None
    if origin is dict:
        return "pairs", None
    if origin is list and args and args[0] is float:
        return "floats", None
    return "skip", None


def _field_option(path: tuple[str, ...], f: FieldInfo, panel: str,
                  flag: str | None = None, balancer: str | None = None) -> ConfigOption | None:
    extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
    if not extra.get("cli", True):
        return None
    kind, choices = _scalar(f.annotation)
    if kind == "skip":
        return None
    flag = str(extra.get("flag") or flag or "--" + path[-1].replace("_", "-"))
    default = f.get_default(call_default_factory=True)
    return ConfigOption(param=flag[2:].replace("-", "_"), flag=flag, path=path, kind=kind,
                        panel=str(extra.get("panel") or panel), help=f.description or "",
                        default=default, balancer=balancer, choices=choices)


def config_options(exclude_panels: Iterable[str] = (),
                   exclude: Iterable[str] = ()) -> list[ConfigOption]:
    """Every generated option, minus the given panels and flags."""
    out: list[ConfigOption] = []
    for name, f in TrainConfig.model_fields.items():
        if name in _BLOCKS:
            block: type[BaseModel] = f.annotation  # type: ignore[assignment]
            for sub, sf in block.model_fields.items():
                o = _field_option((name, sub), sf, _BLOCKS[name])
                if o:
                    out.append(o)
        else:
            o = _field_option((name,), f, "Run")
            if o:
                out.append(o)
    for bname in BALANCERS.names():
        for sub, sf in balancer_class(bname).Options.model_fields.items():
            o = _field_option(("balancer", sub), sf, "Method",
                              flag=f"--{bname}-{sub}".replace("_", "-"), balancer=bname)
            if o:
                out.append(o)
    panels, flags = set(exclude_panels), set(exclude)
    out = [o for o in out if o.panel not in panels and o.flag not in flags]
    seen: dict[str, ConfigOption] = {}
    for o in out:
        if o.param in seen:
            raise RuntimeError(f"two config fields want the flag {o.flag}: {'.'.join(o.path)} and "
                               f"{'.'.join(seen[o.param].path)}; give one a `flag`")
        seen[o.param] = o
    return out


def with_config_options(options: list[ConfigOption], required: Iterable[str] = ("--data",),
                        ) -> Callable[[Callable], Callable]:
    """Give a command (whose last parameter is `**config_values`) the generated options: they
    join its signature, so typer lists and parses them, and arrive in `config_values`. The flags
    in ``required`` have no default: click refuses a command line without them (and `--help`
    marks them required, as val's and audit's --data)."""

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        clash = [o.flag for o in options if o.param in names]
        if clash:
            raise RuntimeError(f"{fn.__name__}: own parameters clash with config options {clash}")
        must = set(required)
        gen = [inspect.Parameter(o.param, inspect.Parameter.KEYWORD_ONLY,
                                 default=inspect.Parameter.empty if o.flag in must else None,
                                 annotation=o.annotation()) for o in options]
        params = [*[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own], *gen]
        params.sort(key=lambda p: PANEL_ORDER.index(_panel_of(p)))  # stable: panels in order
        fn.__signature__ = sig.replace(parameters=params)
        fn.__annotations__ = {p.name: p.annotation for p in fn.__signature__.parameters.values()}
        return fn

    return deco


PANEL_ORDER = ("Data", "Model", "Method", "Optimisation", "Loss", "Augmentation", "Run", None)


def _panel_of(p: inspect.Parameter) -> str | None:
    info = [m for m in getattr(p.annotation, "__metadata__", ()) if hasattr(m, "rich_help_panel")]
    panel = info[0].rich_help_panel if info else None
    return panel if panel in PANEL_ORDER else None


def config_overrides(values: dict[str, Any], options: list[ConfigOption],
                     ) -> tuple[dict[str, Any], list[ConfigOption]]:
    """Nested config overrides from the option values given (None = not given), and the balancer
    options among them (the caller checks they belong to the run's balancer)."""
    over: dict[str, Any] = {}
    given: list[ConfigOption] = []
    for o in options:
        v = values.get(o.param)
        if v is None:
            continue
        node: Any = o.parse(v)
        for key in reversed(o.path):
            node = {key: node}
        over = merge_dicts(over, node)
        if o.balancer:
            given.append(o)
    return over, given


def check_balancer_options(given: list[ConfigOption], balancer: str) -> None:
    for o in given:
        if o.balancer != balancer:
            raise typer.BadParameter(f"is an option of balancer {o.balancer!r}, and this run uses "
                                     f"{balancer!r}", param_hint=o.flag)


def one_line(e: ValidationError, options: list[ConfigOption]) -> typer.BadParameter:
    """A config validation error as one line naming the flag (or the config key)."""
    err = e.errors()[0]
    loc = tuple(str(x) for x in err.get("loc", ()))
    flag = next((o.flag for o in options if o.path == loc[:len(o.path)]), None)
    where = flag or ".".join(loc) or "config"
    msg = str(err.get("msg", str(e))).removeprefix("Value error, ")  # a validator's own words
    return typer.BadParameter(msg + _fix(err, flag or where), param_hint=where)


def _fix(err: Any, flag: str) -> str:
    """"; got 100, use --imgsz 96 or --imgsz 128": the nearest values a bound accepts."""
    ctx, value, kind = err.get("ctx") or {}, err.get("input"), err.get("type", "")
    if not isinstance(value, int | float) or isinstance(value, bool):
        return ""
    if kind == "multiple_of":
        m = ctx["multiple_of"]
        low = max(m, int(value // m * m))
        ups = [low] if low > value else [low, low + m]
        return f"; got {value:g}, use " + " or ".join(f"{flag} {u:g}" for u in ups)
    if kind in ("greater_than_equal", "less_than_equal"):
        bound = ctx.get("ge", ctx.get("le"))
        side = "or more" if kind == "greater_than_equal" else "or less"
        return f"; got {value:g}, use {flag} {bound:g} {side}"
    if kind in ("greater_than", "less_than"):
        return f"; got {value:g}"
    return ""


WEIGHTS_HELP = "Checkpoint (.pt) or exported graph (.onnx, .half.onnx, .int8.onnx)"


def check_imgsz(value: int | None) -> int | None:
    """typer callback of every command's --imgsz: the bounds of `TrainConfig.imgsz`, refused in
    the words `train` uses ("Input should be a multiple of 32; got 100, use --imgsz 96 or
    --imgsz 128")."""
    from pydantic import TypeAdapter

    if value is None:
        return None
    try:
        bounds = tuple(TrainConfig.model_fields["imgsz"].metadata)  # ge=32, multiple_of=32
        TypeAdapter(Annotated[(int, *bounds)]).validate_python(value)
    except ValidationError as e:
        err = e.errors()[0]
        raise typer.BadParameter(str(err["msg"]) + _fix(err, "--imgsz"),
                                 param_hint="--imgsz") from None
    return value


def imgsz_option(default: str | None = None, **kw: Any) -> Any:
    """The --imgsz option of val, predict, export, audit and demo: train's help text
    (`IMGSZ_HELP`) and train's check (`check_imgsz`). ``default``: the default to name in the help
    where the parameter's own default is None ("the checkpoint's")."""
    text = IMGSZ_HELP + (f" \\[default: {default}]" if default else "")
    return typer.Option("--imgsz", help=text, callback=check_imgsz, **kw)


def read_config_file(path: Path | None) -> dict[str, Any]:
    """`train --config FILE`'s overrides, read by the guarded YAML reader (`medmtl.yamlio`: size,
    depth and alias-expansion limits, so an alias bomb fails at once); a bad file is one line
    naming ``--config`` and the file. None: no overrides."""
    from medmtl.errors import InputError
    from medmtl.yamlio import load_yaml_mapping

    if path is None:
        return {}
    try:
        return load_yaml_mapping(path, "--config YAML")
    except InputError as e:
        raise typer.BadParameter(str(e), param_hint="--config") from None


def _holds(over: Any, loc: tuple[str, ...]) -> bool:
    """Whether the nested dict `over` sets the config key at `loc` (or a block above it)."""
    for key in loc:
        if not isinstance(over, dict):
            return True
        hit = [v for k, v in over.items() if str(k) == key]
        if not hit:
            return False
        over = hit[0]
    return True


def config_file_error(e: ValidationError, path: Path | None, from_file: dict[str, Any],
                      flags: dict[str, Any]) -> typer.BadParameter | None:
    """A validation error of a value that came from the --config file (and no flag overrode) as
    one line naming the file and the key; None for any other error."""
    err = e.errors()[0]
    loc = tuple(str(x) for x in err.get("loc", ()))
    if path is None or not loc or not _holds(from_file, loc) or _holds(flags, loc):
        return None
    msg = str(err.get("msg", str(e))).removeprefix("Value error, ")
    return typer.BadParameter(f"{path}: key {'.'.join(loc)}: {msg}", param_hint="--config")


__all__ = ["WEIGHTS_HELP", "ConfigOption", "check_balancer_options", "check_imgsz",
           "config_file_error", "config_options", "config_overrides", "imgsz_option", "one_line",
           "read_config_file", "with_config_options"]
