"""Checks `train`, `compare` and `tune` run once before any run folder is made: the flags'
values, the methods, the dataset YAML, the device, and the files that options name (corrections,
trusted clip labels, a corruption matrix). Each failure is one line naming the option."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError

from medmtl.cli.options import ConfigOption, one_line
from medmtl.config import TrainConfig
from medmtl.data.audit import check_corrections
from medmtl.data.corrections import CorrectionError


def preflight(data: str, over: dict[str, Any], options: list[ConfigOption],
              methods: tuple[str, ...] | list[str] = (), check_config: bool = True) -> None:
    """What every run would fail on, checked once before any folder is made: the flags' values
    (a bad one named by its flag among ``options``), the methods, the dataset YAML and the
    device."""
    from medmtl.data.dataset_yaml import load_data_yaml
    from medmtl.devices import select_device
    from medmtl.methods import build_config, check_method

    try:
        if check_config:
            build_config("fixed", over)
        for m in methods:
            check_method(m)
    except ValidationError as e:
        raise one_line(e, options) from None
    except (KeyError, ValueError) as e:
        raise typer.BadParameter(str(e).strip("'\""), param_hint="--methods") from None
    load_data_yaml(data)
    select_device(str(over.get("device") or TrainConfig().device))


def check_option_files(data: str, over: dict[str, Any]) -> None:
    """A bad or stale corrections file fails once, before any run starts; so do bad trusted
    labels and a bad corruption file."""
    if over.get("corrections"):
        try:
            check_corrections(data, over["corrections"])
        except CorrectionError as e:
            raise typer.BadParameter(str(e), param_hint="--corrections") from None
    check_view_label_files(data, over)


def check_view_label_files(data: str, over: dict[str, Any]) -> None:
    """--trusted and --corruption read against the data's cls_names: one line, exit 2."""
    if not (over.get("trusted") or over.get("corruption")):
        return
    from medmtl.data.dataset_yaml import DataError, load_data_yaml
    from medmtl.data.trusted import load_corruption, load_trusted

    cls_names = list(load_data_yaml(data).cls_names)
    for key, load in (("trusted", load_trusted), ("corruption", load_corruption)):
        if over.get(key):
            try:
                load(over[key], cls_names)
            except DataError as e:
                raise typer.BadParameter(str(e), param_hint=f"--{key}") from None
