"""Worker functions for tests/test_share_processes.py.

They live in a plain module of their own (tests/ is on sys.path) rather than in the test
module, so that a spawned multiprocessing worker, a loky worker or a dask worker finds them by
name without importing pytest's test module (which, under --import-mode=importlib, is importable
only as ``tests.test_share_processes`` from the checkout's root).

Each reports what it received (type, mode, how many bytes it mapped, its pid) next to its
result, so the tests can tell a reference from a copy.
"""
import os

import numpy as np

import mmarray


def _mapped_nbytes(array):
    """Bytes of the mmarray mapping behind ``array`` (-1 for an array that maps nothing)."""
    mapping = mmarray.mapping_of(array)
    return -1 if mapping is None else mapping.nbytes


def expected_rows(lo, hi, width):
    """What the writer tests put in rows [lo, hi) of a (rows, width) float64 file: each
    element its own flat index, so a row written twice or into the wrong place shows."""
    return np.arange(lo * width, hi * width, dtype="f8").reshape(hi - lo, width)


def fill_rows(task):
    """Write expected_rows(lo, hi, width) through one kind of reference, flush, report."""
    kind, target, lo, hi, width = task
    values = expected_rows(lo, hi, width)
    if kind == "mapping":       # the whole Mapping plus a row range
        target[lo:hi] = values
        target.flush(lo, hi)
        report = {"mode": target.mode, "mapped": target.nbytes}
        target.close()
    elif kind == "ref":         # an ArrayRef of just these rows
        array = target.array
        array[...] = values
        mmarray.mapping_of(array).flush()
        report = {"mode": "r+" if target.writable else "r", "mapped": _mapped_nbytes(array)}
    elif kind == "memmap":      # an mmarray.memmap slice
        target[...] = values
        target.flush()
        report = {"mode": target.mode, "mapped": _mapped_nbytes(target),
                  "filename": target.filename, "offset": target.offset}
    else:
        raise ValueError(kind)
    report.update(type=type(target).__name__, pid=os.getpid())
    return report


def total(task):
    """Sum of what a read-only reference shows: (reference, key) with key None for the whole
    thing, or a key to index a Mapping with."""
    target, key = task
    array = np.asarray(target) if key is None else target[key]
    report = {"sum": float(array.sum(dtype="f8")), "shape": array.shape,
              "writeable": bool(array.flags.writeable), "type": type(target).__name__,
              "mapped": _mapped_nbytes(array), "pid": os.getpid()}
    if isinstance(target, mmarray.memmap):
        report.update(filename=target.filename, offset=target.offset, mode=target.mode)
    return report


def write_part_and_report(part, value):
    """joblib: fill an mmarray.memmap (or ArrayRef) part and say what arrived."""
    if isinstance(part, mmarray.ArrayRef):
        array = part.array
        array[...] = value
        mmarray.mapping_of(array).flush()
        return {"type": type(part).__name__, "filename": part.filename,
                "mapped": _mapped_nbytes(array), "pid": os.getpid()}
    part[...] = value
    part.flush()
    return {"type": type(part).__name__, "filename": part.filename, "mode": part.mode,
            "mapped": _mapped_nbytes(part), "pid": os.getpid()}


def mapped_nbytes_block(block):
    """dask map_blocks: a block of one element per input block holding the bytes the mmarray
    mapping behind it spans (the chunk alone when the task mapped only its chunk)."""
    return np.full((1,) * block.ndim, _mapped_nbytes(block), dtype=np.int64)


def make_output(task):
    """Create and fill an output file, and return references to it instead of its data: the
    Mapping itself (open, mode 'w+'), an ArrayRef of every other row and a memmap slice."""
    path, rows, width, value = task
    m = mmarray.open(path, dtype="f8", mode="w+", shape=(rows, width))
    m[...] = value + np.arange(rows, dtype="f8")[:, None]
    m.flush()
    mm = mmarray.memmap(path, dtype="f8", mode="r", shape=(rows, width))
    return m, mmarray.ref(m.array[::2]), mm[rows // 2:]


def same(obj):
    """distributed: hold ``obj`` as the result of a task on the worker that runs it."""
    return obj


def fill_and_report(part, value):
    """distributed: fill what arrived from another worker, and say what it was."""
    part[...] = value
    if hasattr(part, "flush"):
        part.flush()
    return {"type": type(part).__name__, "filename": getattr(part, "filename", None)}
