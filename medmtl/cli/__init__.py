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
    other exception is a bug and keeps its traceback. ``--debug`` anywhere on the command line
    (or ``MEDMTL_DEBUG=1``) shows the traceback of every error."""
    import os
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MEDMTL_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    before = os.environ.get("MEDMTL_DEBUG")
    if debug:  # the runs `compare` and `tune` start as subprocesses show their tracebacks too
        os.environ["MEDMTL_DEBUG"] = "1"
    try:
        rv = app(args=args, prog_name="medmtl", standalone_mode=False)
    except KeyboardInterrupt:  # Ctrl-C: train has saved last.pt and said so
        print("Aborted!", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if debug and "NoArgsIsHelpError" not in {c.__name__ for c in type(e).__mro__}:
            raise
        _one_line(e, args)
    finally:  # main() called in-process (tests, notebooks) leaves the environment as it was
        if before is None:
            os.environ.pop("MEDMTL_DEBUG", None)
        else:
            os.environ["MEDMTL_DEBUG"] = before
    sys.exit(rv if isinstance(rv, int) else 0)


def _one_line(e: Exception, args: list[str]) -> None:
    """Exit with a known error's one line; re-raise anything else (a bug: its traceback)."""
    import sys

    from medmtl.errors import MedmtlError

    if isinstance(e, MedmtlError | FileNotFoundError | FileExistsError):
        print(f"error: {error_text(e)}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2))
    # click's own errors (typer may vendor click, so they are recognised by their shape)
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:  # `medmtl` alone: the help, as usual
        print(e.format_message())  # type: ignore[attr-defined]
        sys.exit(0)
    if "ClickException" in names:  # a bad option value: one line naming the option
        msg = e.format_message()  # type: ignore[attr-defined]
        hint = key_value_hint(args) if int(getattr(e, "exit_code", 2)) == 2 else None
        print(f"error: {error_text(hint or msg)}", file=sys.stderr)
        sys.exit(int(getattr(e, "exit_code", 2)))
    if "Abort" in names:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    raise e



def key_value_hint(args: list[str]) -> str | None:
    """Ultralytics-style ``data=x epochs=3`` arguments (the cause of click's "unexpected extra
    arguments" or "missing option") as what to type instead: ``--data x --epochs 3``. A token
    counts when it does not follow an option (``--methods a:k=v`` is a value)."""
    import re
    import shlex

    extra = [a for i, a in enumerate(args)
             if i > 0 and re.match(r"^[A-Za-z_][\w-]*=", a) and not args[i - 1].startswith("-")]
    if not extra:
        return None
    fixed = " ".join("--{} {}".format(k.replace("_", "-"), shlex.quote(v))
                     for k, _, v in (a.partition("=") for a in extra))
    return (f"medmtl takes options, not key=value arguments: instead of "
            f"{' '.join(extra)!r} type {fixed!r} (see medmtl COMMAND --help)")


def error_text(e: BaseException | str, width: int = 400) -> str:
    """The message of an error, each line cut to `width` characters."""
    text = str(e).strip() or type(e).__name__
    if text.startswith("Caught ") and "Original Traceback" in text:  # from a DataLoader worker
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return "\n".join(ln if len(ln) <= width else ln[:width] + "..." for ln in text.splitlines())


if __name__ == "__main__":
    main()
