"""The method plug-ins a run uses: the built-in ones (staged, distill, auto) registered by
importing their modules, those of installed packages (the `medmtl.plugins` entry-point group),
and any registered in the running process (a test, a notebook). The interface is in
plugin_api.py."""

from __future__ import annotations

from typing import Any

from medmtl.engine import autobranch, stages, teacher  # noqa: F401  (they register the built-ins)
from medmtl.engine.plugin_api import PLUGINS, MethodPlugin
from medmtl.methods import load_entry_points

BUILT_IN = ("staged", "distill", "auto")  # their order in a run (history.csv's stage label)


def plugin_classes(cfg: Any) -> list[type[MethodPlugin]]:
    """The plug-in classes a run with `cfg` uses, built-ins first; a one-line ValueError for a
    name in `cfg.plugins` that nothing registered."""
    load_entry_points()
    unknown = [n for n in cfg.plugins if n not in PLUGINS]
    if unknown:
        raise ValueError(f"unknown method plug-in(s) {', '.join(map(repr, unknown))}; registered: "
                         f"{', '.join(PLUGINS.names())} (a package registers its own through "
                         "the medmtl.plugins entry-point group, docs/extending.md)")
    order = sorted(PLUGINS.names(), key=lambda n: (BUILT_IN.index(n) if n in BUILT_IN
                                                   else len(BUILT_IN), n))
    classes: list[Any] = [PLUGINS.get(n) for n in order]
    return [c for c in classes if c.uses(cfg)]


__all__ = ["BUILT_IN", "plugin_classes"]
