"""Range policy for Mapping's region operations: rows or elements in, bytes out."""
from __future__ import annotations

import operator

from mmarray import _engine

#: Advice name accepted by Mapping.advise -> its enum mm_advice value, as the engine exports.
ADVICE_CODES = dict(_engine.ADVICE)
ADVICE = tuple(ADVICE_CODES)


def advice_code(advice):
    """Return the C code for an advice name, or raise ValueError naming the valid ones."""
    try:
        return ADVICE_CODES[advice]
    except (KeyError, TypeError):
        raise ValueError(f"advice must be one of {list(ADVICE)!r}, got {advice!r}") from None


def byte_range(shape, order, itemsize, start, stop):
    """Map ``[start, stop)`` along the outer axis to ``(first_byte, nbytes)`` of the region.

    The outer axis is the first for C order and the last for Fortran order: the one whose
    index ranges are contiguous in memory. For a 1-D array these are elements. Negative and
    out-of-range bounds follow Python slicing; ``None`` means the whole range.
    """
    if not shape:  # 0-d
        return 0, itemsize
    axis = 0 if order == "C" else len(shape) - 1
    n = shape[axis]
    per = itemsize
    for i, d in enumerate(shape):
        if i != axis:
            per *= d
    lo, hi, _ = slice(None if start is None else operator.index(start),
                      None if stop is None else operator.index(stop)).indices(n)
    if hi <= lo:
        return lo * per, 0
    return lo * per, (hi - lo) * per
