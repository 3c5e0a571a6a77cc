"""`medmtl` command line: a thin typer layer; every command calls a package function.

`app.py` holds the application; each `*_cmds.py` module registers its commands on it; `options.py`
generates the configuration options of `train` and `compare` from the config models.
"""

from __future__ import annotations

from medmtl.cli import data_cmds, deploy_cmds, train_cmds
from medmtl.cli.app import app

__all__ = ["app", "data_cmds", "deploy_cmds", "main", "train_cmds"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
