"""Finding the user's function from a ``MODULE:FUNC`` string."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any

from ._errors import ConfigError


def load_function(spec: str) -> Callable[[Any], Any]:
    """Import ``MODULE:FUNC``; MODULE is a module name or a path to a ``.py`` file.

    The current directory (or the file's directory) goes first on ``sys.path``, as
    with ``python -m``, so that worker processes, which receive ``sys.path``, import
    the same module by the same name.
    """
    module_part, sep, name = spec.rpartition(":")
    if not sep or not module_part or not name:
        raise ConfigError(
            f"expected MODULE:FUNC (for example mymodule:process or jobs.py:process), got {spec!r}"
        )
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_path(module_part)
    else:
        _put_first_on_path(os.getcwd())
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            raise ConfigError(
                f"cannot import module {module_part!r}: {exc}. MODULE is a module name "
                "importable from the current directory, or a path to a .py file"
            ) from exc
        except Exception as exc:
            raise ConfigError(
                f"importing module {module_part!r} failed: {type(exc).__name__}: {exc}"
            ) from exc
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        hint = f"; it defines: {', '.join(public[:20])}" if public else ""
        raise ConfigError(f"module {module_part!r} has no function {name!r}{hint}")
    if not callable(fn):
        raise ConfigError(f"{spec!r} is a {type(fn).__name__}, not a function")
    return fn  # type: ignore[no-any-return]


def _put_first_on_path(directory: str) -> None:
    if directory in sys.path:
        sys.path.remove(directory)
    sys.path.insert(0, directory)


def _import_path(path: str) -> Any:
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        raise ConfigError(f"cannot import {path!r}: no such file")
    directory, filename = os.path.split(full)
    modname = os.path.splitext(filename)[0]
    if not modname.isidentifier():
        raise ConfigError(
            f"cannot import {path!r}: {modname!r} is not a valid module name "
            "(rename the file with letters, digits and underscores)"
        )
    existing = sys.modules.get(modname)
    if existing is not None and os.path.abspath(getattr(existing, "__file__", "") or "") != full:
        raise ConfigError(
            f"cannot import {path!r}: a module named {modname!r} is already loaded from "
            f"{getattr(existing, '__file__', 'built-in')}; rename the file"
        )
    _put_first_on_path(directory)
    try:
        return importlib.import_module(modname)
    except Exception as exc:
        raise ConfigError(f"importing {path!r} failed: {type(exc).__name__}: {exc}") from exc
