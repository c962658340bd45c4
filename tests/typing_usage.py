"""The public API as a typed user script: checked by ``mypy --strict`` in test_typing.py.

``usage`` makes correct calls (test_typing.py also runs it); its ``reveal_type`` lines, under
``TYPE_CHECKING`` so that importing this file runs nothing mypy-only, are what mypy must infer.
``wrong_calls`` returns calls that mypy must reject: each carries ``# type: ignore[<code>]``
with the exact error code, and ``warn_unused_ignores`` turns an ignore that catches nothing
into an error. test_typing.py runs those too, to see that they fail at runtime as well.
"""
from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

import mmarray


def usage(directory: str) -> None:
    path = os.path.join(directory, "usage.f32")
    m = mmarray.open(path, dtype=np.float32, mode="w+", shape=(4, 3), order="C")
    a = m.array
    a[:] = 1.5
    m.flush()
    m.flush(1, 3, sync=False)
    m.flush(np.int64(0), None)
    m.advise("random")
    m.advise("willneed", 0, 2)
    m.evict(0, 1)
    fraction = m.resident()
    p = m.prefetch()
    finished = p.wait(timeout=10.0) and p.done
    total = 0.0
    for chunk in m.chunks(2, prefetch=False):
        total += float(chunk.sum())
    view = memoryview(m)
    raw = np.asarray(m)
    found = mmarray.mapping_of(a[1:])
    with mmarray.open(pathlib.Path(path), "f4", "readonly", offset=12, shape=np.int64(3)) as r:
        r.array.tolist()
    with open(path, "r+b") as f, mmarray.open(f, mode="c", order="F") as c:
        c.array.sum()
    mmarray.open(os.fsencode(path), mode="r", populate=True, advise="sequential").close()
    mm = mmarray.memmap(path, dtype="float32", mode="r+", shape=(4, 3))
    mm.flush()
    npy = os.path.join(directory, "usage.npy")
    with mmarray.open_memmap(npy, mode="w+", dtype=np.int16, shape=(2, 3)) as w:
        w[:] = 7
    shared = mmarray.ref(a[1:, ::2])
    rows = m[1:3]
    m[0] = 2.0
    if TYPE_CHECKING:
        reveal_type(shared)
        reveal_type(shared.array)
        reveal_type(shared.shape)
        reveal_type(m.ndim)
        reveal_type(m.__reduce__())
        reveal_type(mmarray.to_dask)
        reveal_type(m)
        reveal_type(m.array)
        reveal_type(m.shape)
        reveal_type(m.dtype)
        reveal_type(m.mode)
        reveal_type(m.order)
        reveal_type(m.offset)
        reveal_type(m.filename)
        reveal_type(m.nbytes)
        reveal_type(m.size)
        reveal_type(m.exports)
        reveal_type(m.closed)
        reveal_type(fraction)
        reveal_type(p)
        reveal_type(finished)
        reveal_type(p.done)
        reveal_type(m.chunks(2))
        reveal_type(raw)
        reveal_type(found)
        reveal_type(r)
        reveal_type(c)
        reveal_type(mmarray.MODES)
        reveal_type(mm)
        reveal_type(mm.closed)
        reveal_type(mm.filename)
        reveal_type(mm.offset)
        reveal_type(mm.mode)
        reveal_type(w)
        reveal_type(mm.__enter__())
    view.release()
    del a, raw, rows, shared
    mmarray.close(mm)
    m.close(strict=False)


def wrong_calls(directory: str) -> list[Callable[[], object]]:
    """Calls mypy rejects (and that fail at runtime): one per lambda."""
    path = os.path.join(directory, "wrong.bin")
    m = mmarray.open(path, mode="w+", shape=8)
    return [
        lambda: m.flush(stop="3"),  # type: ignore[arg-type]
        lambda: m.advise("randon"),  # type: ignore[arg-type]
        lambda: mmarray.open(path, mode="rw"),  # type: ignore[arg-type]
        lambda: mmarray.open(path, order="X"),  # type: ignore[arg-type]
        lambda: mmarray.open(path, shape="8"),  # type: ignore[arg-type]
        lambda: mmarray.open(3.5),  # type: ignore[arg-type]
        lambda: m.resident(start=0.5),  # type: ignore[arg-type]
        lambda: m.array.no_such_attribute,  # type: ignore[attr-defined]
        lambda: mmarray.memmap(path, mode="rw"),  # type: ignore[arg-type]
        lambda: mmarray.open_memmap(path + ".npy", mode="write"),  # type: ignore[arg-type]
        lambda: mmarray.ref(m),  # type: ignore[arg-type]
    ]
