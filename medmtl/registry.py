"""A tiny name -> factory registry (timm style): one file per family, one line to register.

A factory may also claim a family of names: `register("split", pattern=r"split(?P<k>\\d+)")`
makes `get("split2")` return the factory with `k="2"` bound (named groups become keyword
arguments, as strings; the factory converts them). Plain names win over patterns.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

# a named group without nested parentheses, shown as `<name>` in error messages
_GROUP = re.compile(r"\(\?P<(\w+)>(?:[^()\\]|\\.)*\)")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Callable[..., T]] = {}
        self._patterns: dict[str, re.Pattern[str]] = {}

    def register(
        self, name: str, *, pattern: str | None = None
    ) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Register a factory under `name`; with `pattern` (a regular expression, matched against
        the whole name), every name it matches resolves to this factory too."""
        compiled = re.compile(pattern) if pattern is not None else None

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = fn
            if compiled is not None:
                self._patterns[name] = compiled
            return fn

        return deco

    def unregister(self, name: str) -> None:
        """Remove `name` and its pattern, if registered (tests that register a plug-in of their own
        clean up with this)."""
        self._items.pop(name, None)
        self._patterns.pop(name, None)

    def _lookup(self, name: str) -> Callable[..., T] | None:
        if name in self._items:
            return self._items[name]
        for key, pat in self._patterns.items():
            m = pat.fullmatch(name)
            if m is not None:
                return functools.partial(self._items[key], **m.groupdict())
        return None

    def get(self, name: str) -> Callable[..., T]:
        fn = self._lookup(name)
        if fn is None:
            known = ", ".join(self.usage()) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known: {known}")
        return fn

    def create(self, name: str, *args, **kwargs) -> T:
        return self.get(name)(*args, **kwargs)

    def names(self) -> list[str]:
        return sorted(self._items)

    def usage(self) -> list[str]:
        """The names as a user writes them: a pattern entry shows its pattern with each named
        group as `<group>` (`split<k>`)."""
        return [_GROUP.sub(r"<\1>", self._patterns[n].pattern) if n in self._patterns else n
                for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._lookup(name) is not None
