"""Architecture plug-ins. Every module in this folder whose name does not start with `_` is
imported when the package is, and registers its builders in `medmtl.models.base.ARCHS`; adding
an architecture is adding a file here (see docs/extending.md, "Adding an architecture")."""

from __future__ import annotations

import importlib
import pkgutil


def _discover() -> tuple[str, ...]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
            found.append(info.name)
    return tuple(found)


MODULES = _discover()  # the plug-in modules found, in file-name order
