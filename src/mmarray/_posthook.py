"""A one-shot post-import hook: call a function right after a named module first runs,
whatever the order the user imports things in, without ever importing that module here.

mmarray registers its serializer with an optional library (distributed) that may be
imported before or after mmarray: before, the caller registers at once; after, this hook
does it as soon as the library's module has run.
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["when_imported"]


class _Finder(importlib.abc.MetaPathFinder):
    """On sys.meta_path until the module ``name`` is looked for: then it takes itself off,
    finds the real spec with the finders after it, and wraps that spec's loader so that
    ``callback`` runs once the module has run ("importlib" docs: a meta path finder's
    find_spec returns a ModuleSpec or None; the loader's exec_module runs the module)."""

    def __init__(self, name: str, callback: Callable[[], object]) -> None:
        self._name = name
        self._callback = callback
        self._lock = threading.Lock()

    def _remove(self) -> bool:
        with self._lock:
            try:
                sys.meta_path.remove(self)
            except ValueError:
                return False  # taken off already (another thread's import of the name)
            return True

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self._name or not self._remove():
            return None
        spec = None
        for finder in list(sys.meta_path):
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        loader: Any = spec.loader if spec is not None else None
        run = getattr(loader, "exec_module", None)
        if run is None:  # not found (the import fails as it would), or a legacy loader
            return spec
        callback = self._callback

        def exec_module(module: ModuleType) -> None:
            run(module)
            try:
                callback()
            except Exception:  # noqa: S110  # the user's import must not fail because of us
                pass

        loader.exec_module = exec_module
        return spec


def when_imported(name: str, callback: Callable[[], object]) -> None:
    """Call ``callback()`` once, right after the module ``name`` is first imported; at once
    when it is imported already."""
    if name in sys.modules:
        callback()
        return
    sys.meta_path.insert(0, _Finder(name, callback))
