"""`medmtl` command line: a thin typer layer; every command calls a package function.

`app.py` holds the application; each `*_cmds.py` module registers its commands on it; `options.py`
generates the configuration options of `train` and `compare` from the config models.
"""

from __future__ import annotations

from medmtl.cli import data_cmds, deploy_cmds, train_cmds
from medmtl.cli.app import app

__all__ = ["app", "data_cmds", "deploy_cmds", "main", "train_cmds"]


def main(argv: list[str] | None = None) -> None:
    """The ``medmtl`` command. A `MedmtlError` (bad data, a locked run folder, a corrupt
    checkpoint, a run stopped by non-finite losses) and a missing or existing path end in one
    line on stderr, ``error: ...``, and the error's exit status (2, or 1 for a failed run); any
    other exception is a bug and keeps its traceback."""
    import sys

    from medmtl.errors import MedmtlError

    try:
        rv = app(args=argv, prog_name="medmtl", standalone_mode=False)
    except KeyboardInterrupt:  # Ctrl-C: train has saved last.pt and said so
        print("Aborted!", file=sys.stderr)
        sys.exit(130)
    except (MedmtlError, FileNotFoundError, FileExistsError) as e:
        code = getattr(e, "exit_code", 2)
        print(f"error: {error_text(e)}", file=sys.stderr)
        sys.exit(code)
    except Exception as e:
        # click's own errors (typer may vendor click, so they are recognised by their shape)
        names = {c.__name__ for c in type(e).__mro__}
        if "NoArgsIsHelpError" in names:  # `medmtl` alone: the help, as usual
            print(e.format_message())  # type: ignore[attr-defined]
            sys.exit(0)
        if "ClickException" in names:  # a bad option value: one line naming the option
            print(f"error: {error_text(e.format_message())}",  # type: ignore[attr-defined]
                  file=sys.stderr)
            sys.exit(int(getattr(e, "exit_code", 2)))
        if "Abort" in names:
            print("Aborted!", file=sys.stderr)
            sys.exit(1)
        raise
    sys.exit(rv if isinstance(rv, int) else 0)


def error_text(e: BaseException | str, width: int = 400) -> str:
    """The message of an error, each line cut to `width` characters."""
    text = str(e).strip() or type(e).__name__
    if text.startswith("Caught ") and "Original Traceback" in text:  # from a DataLoader worker
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return "\n".join(ln if len(ln) <= width else ln[:width] + "..." for ln in text.splitlines())


if __name__ == "__main__":
    main()
