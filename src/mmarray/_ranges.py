"""Range policy for Mapping's region operations: rows or elements in, bytes out."""
from __future__ import annotations

import operator
from typing import Literal, Optional, SupportsIndex

from mmarray import _engine

#: The advice names Mapping.advise takes (the keys of the engine's ADVICE; a test keeps them
#: equal).
Advice = Literal["normal", "sequential", "random", "willneed", "dontneed", "hugepage",
                 "nohugepage", "populate_read", "populate_write"]
#: Memory layout of a multi-dimensional array.
Order = Literal["C", "F"]
#: A row bound of a region operation (Python slicing rules; None: the end).
RowIndex = Optional[SupportsIndex]

#: Advice name accepted by Mapping.advise -> its enum mm_advice value, as the engine exports.
ADVICE_CODES: dict[str, int] = dict(_engine.ADVICE)
ADVICE: tuple[str, ...] = tuple(ADVICE_CODES)


def advice_code(advice: str) -> int:
    """Return the C code for an advice name, or raise ValueError naming the valid ones."""
    try:
        return ADVICE_CODES[advice]
    except (KeyError, TypeError):
        raise ValueError(f"advice must be one of {list(ADVICE)!r}, got {advice!r}") from None


def byte_range(shape: tuple[int, ...], order: str, itemsize: int, start: RowIndex,
               stop: RowIndex) -> tuple[int, int]:
    """Map ``[start, stop)`` along the outer axis to ``(first_byte, nbytes)`` of the region.

    The outer axis is the first for C order and the last for Fortran order: the one whose
    index ranges are contiguous in memory. For a 1-D array these are elements. Negative and
    out-of-range bounds follow Python slicing; ``None`` means the whole range.
    """
    start, stop = _row_bound(start, "start"), _row_bound(stop, "stop")
    if not shape:  # 0-d
        return 0, itemsize
    axis = 0 if order == "C" else len(shape) - 1
    n = shape[axis]
    per = itemsize
    for i, d in enumerate(shape):
        if i != axis:
            per *= d
    lo, hi, _ = slice(start, stop).indices(n)
    if hi <= lo:
        return lo * per, 0
    return lo * per, (hi - lo) * per


def _row_bound(value: RowIndex, name: str) -> int | None:
    """``value`` as an int (``operator.index``), or None; TypeError naming it otherwise."""
    if value is None:
        return None
    return as_int(value, name, "an integer row index or None")


def as_int(value: SupportsIndex, name: str, expected: str) -> int:
    """``operator.index(value)``, or TypeError saying what ``name`` got and ``expected``."""
    try:
        return operator.index(value)
    except TypeError:
        text = repr(value)
        text = text if len(text) <= 80 else text[:77] + "..."
        raise TypeError(f"{name} must be {expected}, got {type(value).__name__} "
                        f"{text}") from None
