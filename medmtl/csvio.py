"""Reading the CSV files a user gives (corrections, trusted labels, probabilities): Python's `csv`
raises `csv.Error` on a cell over its field limit (131,072 characters), on a quote left open at
the end of the file or a stray quote inside a cell (with ``strict=True``); `csv_rows` and
`csv_header` turn it into the module's own error, ``file:line: what``, like every other
problem of those files."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from medmtl.errors import InputError

T = TypeVar("T")


def csv_problem(e: csv.Error, path: str | Path, line: int) -> str:
    """``file:line: what`` of a `csv.Error`, with what to do."""
    text = str(e)
    if "field larger than field limit" in text:
        what = (f"a cell longer than the {csv.field_size_limit()} characters a CSV cell may hold "
                "(an unclosed quote that runs on?)")
    elif "unexpected end of data" in text:
        what = "a quoted cell is still open at the end of the file (an unclosed \" earlier?)"
    elif "expected after" in text:
        what = f"a quote inside a cell ({text}); quote the whole cell and double inner quotes"
    else:
        what = f"not a readable CSV row ({text})"
    return f"{path}:{line}: {what}"


def csv_rows(reader: Iterable[T], path: str | Path,
             error: Callable[[str], Exception] = InputError) -> Iterator[T]:
    """The rows of a `csv.reader` / `csv.DictReader`; a `csv.Error` raises ``error("file:line:
    ...")`` (the reader's line number)."""
    it = iter(reader)
    while True:
        try:
            row = next(it)
        except StopIteration:
            return
        except csv.Error as e:  # a DictReader's own line_num is stale until a row is read
            line = getattr(getattr(reader, "reader", reader), "line_num", 0)
            raise error(csv_problem(e, path, int(line))) from None
        yield row


def csv_header(reader: csv.DictReader, path: str | Path,
               error: Callable[[str], Exception] = InputError) -> Any:
    """`reader.fieldnames` (it reads the header row), a `csv.Error` as in `csv_rows`."""
    try:
        return reader.fieldnames
    except csv.Error as e:
        raise error(csv_problem(e, path, max(1, reader.reader.line_num))) from None


__all__ = ["csv_header", "csv_problem", "csv_rows"]
