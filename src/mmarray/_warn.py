"""Warnings that name the user's line: the first caller outside the package.

A fixed ``stacklevel`` counts the package's own frames, and that count changes with the call
path and with the build: the modules that setup.py compiles with Cython run without Python
frames. The level is found by walking the stack instead, as pandas' ``find_stack_level``
does (``warnings.warn(skip_file_prefixes=...)`` needs Python 3.12).
"""
from __future__ import annotations

import sys
import warnings
from types import FrameType

_PACKAGE = __name__.rpartition(".")[0]  # "mmarray", or "vendor.mmarray" where vendored


def stacklevel_outside_package() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` call, made by the caller of this
    function, name the first frame whose module is not in the package."""
    level = 1
    # What warnings.warn counts as level 1 (a compiled caller has no frame: the next one).
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not isinstance(name, str) or not (name == _PACKAGE
                                             or name.startswith(_PACKAGE + ".")):
            return level
        frame = frame.f_back
        level += 1
    return level


def warn_at_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn(message, category)`` naming the user's line."""
    warnings.warn(message, category, stacklevel=stacklevel_outside_package())
