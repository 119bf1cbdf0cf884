"""Names a package loads on first use, so that importing it stays cheap.

A worker process imports ``spindle`` (and ``spindle.pool`` to unpickle the function its
tasks go through), and must not load the engine, rich or aiohttp for it: the package
lists the names it re-exports with the module each comes from, and this module's
:func:`lazy_names` makes the package's ``__getattr__`` and ``__dir__``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_names(
    package: str, names: Mapping[str, str], namespace: dict[str, Any], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``names`` maps each name to the
    module (relative to ``package``) it is imported from when first asked for; the value
    is then kept in the package's ``namespace``."""

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(public))

    return __getattr__, __dir__
