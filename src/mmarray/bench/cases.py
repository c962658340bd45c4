"""The benchmark cases: one plain function per case, each returning a list of result dicts.

Every case runs its contenders interleaved (see ``_timing.interleave``) on files it makes in
``ctx.workdir``; the CLI (``python -m mmarray bench``) calls them in the order of ``CASES``.

Contender roles
---------------
``reference``  the NumPy way (numpy.memmap, np.load): ratios "vs numpy" are taken against it.
``limit``      a bound no contender can beat: the C floor (the bare system calls, in C, in a
               loop), the in-memory ndarray (the data already in memory, nothing mapped),
               vm.max_map_count. Ratios "vs limit" are taken against it (per round, the best
               limit contender); they are <= 1 up to noise.
``baseline``   the plain way of doing the same work with system calls (read()/O_DIRECT,
               pread, write() + fsync, a worker mapping the file itself, ...): not a bound, a
               contender may beat it (a mapping's first touch outruns read() on a cold disk,
               fault-around outruns one pread per page). Ratios "vs baseline" are taken
               against it (per round, the best baseline contender) and may exceed 1.
``mmarray``    mmarray's ways; targets are judged on these.
``other``      further comparisons (stdlib mmap + np.frombuffer, ...).

All ratios are *speed* ratios, median over rounds of the per-round ratio: > 1 means faster
than (or, for counts, more than) what it is compared with; ``vs_*_iqr`` is the interquartile
range of the per-round ratios. Every contender also reports the CPU time of the timed part
(``cpu_samples_s``, ``cpu_median``, ``cpu_per_wall``: this process's threads and its
children), and ``peak_rss`` where its runner measured one.

What is timed in the scan cases (sum_cached_*, cold_*): open, the work, and the close and
unmap (for numpy.memmap: dropping the last reference). After each sample the harness checks
that no mapping of the file is left in /proc/self/maps, so an unmap cannot slip out of the
timed region.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import mmap
import os
import pickle
import statistics
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zipfile

import numpy as np

from . import _timing as T
from . import _users
from ._harness import (  # noqa: F401  (re-exported: benchmarks/, tests)
    MODES,
    SHAPE_FILES_MIN,
    SHARE_COLS,
    SHARE_TASKS,
    SHARE_WORKERS,
    UNITS,
    Contender,
    Context,
    at_most,
    evaluate_target,
    micro,
    run_case,
    target,
)

# -- helpers for mmarray.load (its exact API is still being written) ---------------------------

def _load_kwargs(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}
    if "mmap_mode" in params:
        return {"mmap_mode": "r"}
    if "mode" in params:
        return {"mode": "r"}
    return {}


def _is_mapping_like(obj):
    return hasattr(obj, "array") and callable(getattr(obj, "close", None))


def load_npy_stmt(ctx, path):
    """A statement opening ``path`` with mmarray.load and closing it again, adapted to what
    load returns (a Mapping-like object, or an array)."""
    load, why = ctx.feature("load")
    if load is None:
        raise T.Unavailable(why)
    kw = _load_kwargs(load)
    ns = {"load": load, "path": path, "kw": kw, "close": ctx.mm.close}
    probe = load(path, **kw)
    if _is_mapping_like(probe):
        stmt = "m = load(path, **kw); a = m.array; m.close(); del a"
    elif isinstance(probe, np.ndarray):
        stmt = "a = load(path, **kw); del a"
        try:
            ctx.mm.close(probe)
            stmt = "a = load(path, **kw); close(a); del a"
        except Exception:
            pass
    else:
        raise TypeError(f"mmarray.load returned {type(probe).__name__}: not understood")
    del probe
    return stmt, ns, kw


def load_npz_stmt(ctx, path, member):
    load, why = ctx.feature("load")
    if load is None:
        raise T.Unavailable(why)
    kw = _load_kwargs(load)
    ns = {"load": load, "path": path, "kw": kw, "member": member, "close": ctx.mm.close}
    z = load(path, **kw)
    item = z[member]
    parts = ["z = load(path, **kw)", "a = z[member]"]
    if _is_mapping_like(item):
        parts += ["b = a.array", "a.close()", "del b"]
    elif not isinstance(item, np.ndarray):
        raise TypeError(f"mmarray.load(npz)[{member!r}] returned {type(item).__name__}")
    if callable(getattr(z, "close", None)):
        parts.append("z.close()")
        z.close()
    parts.append("del a")
    del item, z
    return "; ".join(parts), ns, kw


def npy_data_offset(fp):
    """Offset of the array data after the .npy header starting at fp's position."""
    start = fp.tell()
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        np.lib.format.read_array_header_1_0(fp)
    else:
        np.lib.format.read_array_header_2_0(fp)
    return fp.tell() - start


def npz_member_layout(path, member):
    """(local header offset, data offset, data length, central directory offset) of an
    uncompressed .npz member."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member + ".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError("member is compressed")
        hdr = info.header_offset
        cd_off = z.start_dir
    with open(path, "rb") as f:
        f.seek(hdr)
        local = f.read(30)
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        npy_start = hdr + 30 + name_len + extra_len
        f.seek(npy_start)
        data_off = npy_start + npy_data_offset(f)
    return hdr, data_off, info.file_size - (data_off - npy_start), cd_off


# -- the cases ------------------------------------------------------------------------------------

#: open + array + close of the 4 KiB file: contender -> statement (names: open_close_namespace).
OPEN_CLOSE = {
    "numpy.memmap": "a = np.memmap(path, dtype=np.uint8, mode='r'); del a",
    "stdlib mmap + frombuffer": "fd = os.open(path, O_RDONLY); m = mmap.mmap(fd, 0, "
                                "access=ACCESS_READ); os.close(fd); a = np.frombuffer(m, "
                                "np.uint8); del a; m.close()",
    "mmarray": "m = mmopen(path, mode='r'); a = m.array; m.close(); del a",
    "mmarray.memmap": "a = mmmemmap(path, dtype=np.uint8, mode='r'); del a",
}


def open_close_namespace(ctx):
    """The names the :data:`OPEN_CLOSE` statements use (``path``: the 4 KiB file)."""
    return {"np": np, "os": os, "mmap": mmap, "path": ctx.file("small.bin"),
            "mmopen": ctx.mm.open, "mmmemmap": ctx.feature("memmap")[0],
            "O_RDONLY": os.O_RDONLY, "ACCESS_READ": mmap.ACCESS_READ}


def _guard_off(ctx, make):
    """A ``make`` whose runner maps with mmarray's fault guard off (issue #11: the guard must
    cost nothing measurable); skipped for an mmarray without the guard."""
    switch = getattr(ctx.mm, "set_fault_guard", None)

    def wrapped():
        if switch is None:
            raise T.Unavailable("this mmarray has no fault guard (set_fault_guard)")
        switch(False)
        try:
            run = make()
        finally:
            switch(True)

        def run_off():
            switch(False)  # untimed: the runner times its own work
            try:
                return run()
            finally:
                switch(True)
        return run_off
    return wrapped


def case_open_close(ctx):
    """open + array + close of a 4 KiB file."""
    ns = open_close_namespace(ctx)
    path = ns["path"]
    why_memmap = ctx.feature("memmap")[1]
    floor, why_floor = ctx.floor
    roles = {"numpy.memmap": "reference", "stdlib mmap + frombuffer": "other",
             "mmarray": "mmarray", "mmarray.memmap": "mmarray"}
    cs = [Contender(name, roles[name], micro(ctx, stmt, ns),
                    skip=why_memmap if name == "mmarray.memmap" else None)
          for name, stmt in OPEN_CLOSE.items()]
    cs.append(Contender("mmarray, fault guard off", "other",
                        _guard_off(ctx, micro(ctx, OPEN_CLOSE["mmarray"], ns))))
    # What the array adds (its export, the ndarray, their release): the rest is the Mapping.
    cs.append(Contender("mmarray, no array (open + close)", "other",
                        micro(ctx, "m = mmopen(path, mode='r'); m.close()", ns)))
    cs.append(Contender("C floor (open+fstat+mmap+close+munmap)", "limit",
                        _floor_make(ctx, lambda n: floor.open_map(path, n)), skip=why_floor))
    # The least a Python API pays over the C floor for the same statement (pyfloor.c).
    pyfloor, why_pyfloor = ctx.pyfloor
    cs.append(Contender("Python floor (C extension, same statement)",
                        "other", micro(ctx, "m = pfopen(path); a = m.array; m.close(); del a",
                                       {**ns, "pfopen": getattr(pyfloor, "open", None)}),
                        skip=why_pyfloor))
    return [run_case(
        ctx, "open_close_4k", "open + array + close, 4 KiB file", "µs", cs,
        rounds=ctx.micro_rounds, warmup=1, cache_state="cached (file in page cache)",
        targets=[target("≤1.25× the C floor's time", "mmarray", "limit", 1 / 1.25, as_time=True),
                 target("drop-in mmarray.memmap ≤1.5× the C floor's time", "mmarray.memmap",
                        "limit", 1 / 1.5, as_time=True)],
        notes=["mode 'r'; mmarray: open, take .array once, close, drop the array; "
               "mmarray.memmap: open, drop (the unmap)",
               "no target against numpy.memmap: the physical goal is the C floor (which is "
               "itself only a few times faster than numpy.memmap); 'vs numpy' is shown for "
               "information",
               "Python floor: a C extension (mmarray/bench/pyfloor.c) running the same "
               "statement with nothing but the calls (GIL released around them), one object, "
               "the array and its export: no registry, fault guard, modes, dtypes or names"])]


def _floor_make(ctx, call):
    """A ``make`` for a C floor contender: ``call(n)`` returns seconds per iteration."""

    def make():
        per = call(100)
        number = max(100, int(ctx.micro_target / max(per, 1e-9)))

        def run():
            c0 = time.process_time()
            seconds = call(number)
            return T.Sample(seconds, cpu_s=(time.process_time() - c0) / number)
        return run

    return make


def _loop(stmt):
    """``stmt`` (one file's open + close, on ``path``) run for each path of ``paths``."""
    return "for path in paths:\n" + textwrap.indent(stmt, "    ")


def _micro_per_file(ctx, stmt, namespace, nfiles):
    """A ``make`` for a contender that opens each of ``nfiles`` files once per sample: one
    pass over the files is the batch; the sample is seconds (and CPU seconds) per file."""

    def make():
        T.micro_runner(stmt, namespace, 1, per=nfiles)()  # a broken statement fails here
        return T.micro_runner(stmt, namespace, 1, per=nfiles)

    return make


def _floor_many_runner(floor, paths, data_off):
    """The runner of the C floor over ``paths`` (.npy files whose data starts at
    ``data_off``): one pass a sample, seconds and CPU seconds per file."""
    arr = floor.path_array(paths)
    floor.open_reads_map_many(arr, 1, data_off, data_off)  # fails here if it fails

    def run():
        c0 = time.process_time()
        seconds = floor.open_reads_map_many(arr, 1, data_off, data_off)
        return T.Sample(seconds, cpu_s=(time.process_time() - c0) / len(paths))
    return run


def case_npy_open(ctx):
    """.npy open + close over a dataset of many distinct small files (the real case), and
    the same file again and again (caches always hit: for information)."""
    paths = ctx.npy_dataset()
    nfiles = len(paths)
    one = ctx.file("small.npy")
    with open(one, "rb") as f:
        data_off = npy_data_offset(f)
    nbytes = os.path.getsize(one) - data_off
    floor, why_floor = ctx.floor
    mm_open = ("m = mmopen(path, dtype=np.float64, mode='r', offset=off, shape=n); "
               "a = m.array; m.close(); del a")
    np_load = "a = np.load(path, mmap_mode='r'); del a"

    def namespace(path):
        return {"np": np, "path": path, "paths": paths, "mmopen": ctx.mm.open,
                "off": data_off, "n": nbytes // 8}

    # distinct files -------------------------------------------------------------------------
    with open(paths[0], "rb") as f:
        if npy_data_offset(f) != data_off:  # pragma: no cover - np.save changed its header
            raise AssertionError("the dataset's .npy header differs from small.npy's")
    ns = namespace(None)

    def make_load_many():
        stmt, lns, kw = load_npy_stmt(ctx, paths[0])
        lns["paths"] = paths
        many_info.update(call=f"mmarray.load(path, **{kw!r})", stmt=stmt)
        return _micro_per_file(ctx, _loop(stmt), lns, nfiles)()

    def make_floor_many():
        return _floor_many_runner(floor, paths, data_off)

    files_info = {"files": nfiles, "distinct_paths": len(set(paths))}
    many_info = dict(files_info)  # the result's entry shares this dict: make() fills it
    many = [
        Contender("np.load(mmap_mode='r')", "reference",
                  _micro_per_file(ctx, _loop(np_load), ns, nfiles), info=dict(files_info)),
        Contender("mmarray.load", "mmarray", make_load_many, info=many_info),
        Contender("mmarray.open (offset known)", "other",
                  _micro_per_file(ctx, _loop(mm_open), ns, nfiles), info=dict(files_info)),
        Contender("C floor + header pread, per file", "limit", make_floor_many,
                  skip=why_floor, info=dict(files_info)),
    ]
    res_many = run_case(
        ctx, "npy_open_many_files",
        f".npy open + close over {nfiles:,} distinct files (4 KiB of float64 each), per file",
        "µs", many, rounds=ctx.micro_rounds, warmup=1,
        cache_state="cached (all the files in the page cache)",
        params={"files": nfiles, "distinct_paths": len(set(paths))},
        targets=[target("≤1.5× the C floor's time", "mmarray.load", "limit", 1 / 1.5,
                        as_time=True)],
        notes=[f"each sample opens and closes each of the {nfiles:,} files once, in the same "
               f"order (a dataset of many small .npy files, np.arange(512.) each, read one "
               f"after the other); the time is per file",
               "the files share one header (same dtype and shape, as in a real dataset), so "
               "a cache keyed by the header bytes hits; a cache keyed by the path cycles "
               "through more paths than it may keep",
               "C floor: per file open, pread the header, fstat, mmap the data, close, "
               "munmap (no parsing), over the same distinct paths",
               "vs numpy (np.load) is for information: no target"])

    # distinct files, each of another shape ------------------------------------------------------
    shaped = ctx.npy_dataset_shapes()
    for p in (shaped[0], shaped[-1]):
        with open(p, "rb") as f:
            if npy_data_offset(f) != data_off:  # pragma: no cover - np.save changed its header
                raise AssertionError("the shapes dataset's .npy headers differ in length")
    shapes_info = {"files": len(shaped), "distinct_paths": len(set(shaped)),
                   "distinct_headers": len(shaped)}
    shaped_load_info = dict(shapes_info)
    ns_shaped = {"np": np, "paths": shaped}

    def make_load_shapes():
        stmt, lns, kw = load_npy_stmt(ctx, shaped[0])
        lns["paths"] = shaped
        shaped_load_info.update(call=f"mmarray.load(path, **{kw!r})", stmt=stmt)
        return _micro_per_file(ctx, _loop(stmt), lns, len(shaped))()

    def make_floor_shapes():
        return _floor_many_runner(floor, shaped, data_off)

    res_shapes = run_case(
        ctx, "npy_open_many_shapes",
        f".npy open + close over {len(shaped):,} distinct files, each of another shape "
        f"(no header seen twice in a row), per file",
        "µs", [
            Contender("np.load(mmap_mode='r')", "reference",
                      _micro_per_file(ctx, _loop(np_load), ns_shaped, len(shaped)),
                      info=dict(shapes_info)),
            Contender("mmarray.load", "mmarray", make_load_shapes, info=shaped_load_info),
            Contender("C floor + header pread, per file", "limit", make_floor_shapes,
                      skip=why_floor, info=dict(shapes_info)),
        ], rounds=ctx.micro_rounds, warmup=1,
        cache_state="cached (all the files in the page cache)",
        params=dict(shapes_info),
        notes=[f"as npy_open_many_files, but file i holds np.arange(512. + i): all "
               f"{len(shaped):,} headers differ, more than mmarray's header cache keeps, so "
               f"every header is parsed (a dataset of arrays of many shapes: token "
               f"sequences, variable-length records)",
               "no target (issue #13 sets its target on npy_open_many_files); the ratio to "
               "the C floor says what the parse costs"])

    # the same file again and again ------------------------------------------------------------
    ns1 = namespace(one)
    same_info = {}

    def make_load_one():
        stmt, lns, kw = load_npy_stmt(ctx, one)
        same_info.update(call=f"mmarray.load(path, **{kw!r})", stmt=stmt)
        return micro(ctx, stmt, lns)()

    same = [
        Contender("np.load(mmap_mode='r')", "reference", micro(ctx, np_load, ns1)),
        Contender("mmarray.load", "mmarray", make_load_one, info=same_info),
        Contender("mmarray.open (offset known)", "other", micro(ctx, mm_open, ns1)),
        Contender("C floor + header pread", "limit", _floor_make(
            ctx, lambda k: floor.open_reads_map(one, k, [(0, data_off)], data_off, nbytes)),
            skip=why_floor),
    ]
    res_same = run_case(
        ctx, "npy_open_same_file", ".npy open + close of ONE file again and again "
                                   "(caches always hit; for information)",
        "µs", same, rounds=ctx.micro_rounds, warmup=1, cache_state="cached",
        notes=["the same path every time: mmarray's header and path caches always hit, "
               "which a dataset of distinct files does not give; npy_open_many_files is the "
               "figure to read. No targets here.",
               "mmarray.open (offset known) skips header parsing: the floor of mmarray's own "
               "mapping path"])
    return [res_many, res_shapes, res_same]


def case_npz_member(ctx):
    """Open one member of an .npz: np.load(npz)[name] vs mmarray.load(npz)[name]."""
    path = ctx.file("members.npz")
    member = "x"
    hdr, data_off, nbytes, cd_off = npz_member_layout(path, member)
    size = os.path.getsize(path)
    ns = {"np": np, "path": path, "member": member}
    floor, why_floor = ctx.floor
    cs_info = {}

    def make_load():
        stmt, lns, kw = load_npz_stmt(ctx, path, member)
        cs_info["mmarray.load(npz)[name]"] = {
            "call": f"mmarray.load(path, **{kw!r})[{member!r}]", "stmt": stmt}
        return micro(ctx, stmt, lns)()

    cs = [
        Contender("np.load(npz)[name]", "reference",
                  micro(ctx, "with np.load(path) as z: a = z[member]\ndel a", ns)),
        Contender("mmarray.load(npz)[name]", "mmarray", make_load),
        Contender("C floor: 2 preads + mmap", "limit", _floor_make(
            ctx, lambda k: floor.open_reads_map(path, k, [(cd_off, size - cd_off),
                                                          (hdr, data_off - hdr)],
                                                data_off, nbytes)), skip=why_floor),
    ]
    res = run_case(ctx, "npz_member_open", "one .npz member open (1 MiB float64 member of 3)",
                   "µs", cs, rounds=ctx.micro_rounds, warmup=1, cache_state="cached",
                   notes=["np.load reads the member into memory (mmap_mode is ignored for .npz)",
                          "C floor: open, pread the central directory + end record, pread the "
                          "member's local and .npy headers, fstat, mmap the data, close, munmap "
                          "(no parsing)"])
    for e in res["contenders"]:
        e["info"].update(cs_info.get(e["name"], {}))
    return [res]


OPS = (("index_scalar", "a[5]"), ("slice_10", "a[10:20]"), ("slice_sum", "a[:100].sum()"),
       ("ufunc_add", "a + 1"))


def case_ops(ctx):
    """Per-operation overhead on a 4 KiB float64 array: a[5], a[10:20], a[:100].sum(), a + 1."""
    path = ctx.file("ops.f64")
    mm = ctx.mm
    memmap, why_memmap = ctx.feature("memmap")
    arrays = {}
    keep = []
    errors = {}

    def attempt(name, fn):
        try:
            arrays[name] = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"

    attempt("numpy.memmap", lambda: np.memmap(path, dtype=np.float64, mode="r"))

    def stdlib():
        fd = os.open(path, os.O_RDONLY)
        try:
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        keep.append(m)
        return np.frombuffer(m, np.float64)

    attempt("stdlib mmap + frombuffer", stdlib)

    def mmarr():
        m = mm.open(path, dtype=np.float64, mode="r")
        keep.append(m)
        return m.array

    attempt("mmarray", mmarr)
    if memmap is not None:
        attempt("mmarray.memmap", lambda: memmap(path, dtype=np.float64, mode="r"))
    attempt("in-memory ndarray", lambda: np.fromfile(path, dtype=np.float64))
    roles = {"numpy.memmap": "reference", "stdlib mmap + frombuffer": "other",
             "mmarray": "mmarray", "mmarray.memmap": "mmarray", "in-memory ndarray": "limit"}
    out = []
    try:
        for key, op in OPS:
            cs = []
            for name, role in roles.items():
                if name == "mmarray.memmap" and memmap is None:
                    cs.append(Contender(name, role, skip=why_memmap))
                    continue
                if name in errors:
                    cs.append(Contender(name, role, make=_raiser(errors[name])))
                    continue
                a = arrays[name]
                info = {}
                try:
                    info["result_type"] = type(eval(op, {"a": a})).__name__
                except Exception:  # reported when the contender runs
                    pass
                cs.append(Contender(name, role, micro(ctx, op, {"a": a}), info=info))
            out.append(run_case(
                ctx, f"op_{key}", f"`{op}` on a 4 KiB float64 array", "ns", cs,
                rounds=ctx.micro_rounds, warmup=1, cache_state="cached, already touched",
                targets=[target("≤1.1× the in-memory ndarray's time", "mmarray", "limit",
                                1 / 1.1, as_time=True)],
                notes=["result types: " + ", ".join(
                    f"{c.name}: {c.info['result_type']}" for c in cs
                    if "result_type" in c.info)]))
    finally:
        arrays.clear()
        for m in keep:
            try:
                m.close()
            except Exception:
                pass
    return out


def _dropper(obj):
    """A closer that drops the last reference to ``obj`` (a numpy.memmap: that unmaps it), so
    the unmap happens exactly when the closer is called (the caller holds no other
    reference)."""
    held = [obj]
    return held.clear


def _raiser(message):
    def make():
        raise RuntimeError(message)
    return make


# big-file cases ----------------------------------------------------------------------------

def _check_sum(expected, got):
    if not np.isclose(got, expected, rtol=1e-9, atol=0):
        raise AssertionError(f"wrong sum {got!r}, expected {expected!r}")


def _unmapped(path):
    """Raise if a mapping of ``path`` is still in this process after a sample: its unmap
    (close, or the drop of the last array) would have happened outside the timed region."""
    n = T.mappings_of(path)
    if n:
        raise AssertionError(f"{n} mapping(s) of {os.path.basename(path)} still alive after "
                             f"the timed region: the unmap was not timed")


def _timed_body(before, expected, body, path=None):
    """A ``make`` for a big-file sum: ``before()`` untimed, then timed: ``body()``, which
    returns (sum, closer), and the closer (close + unmap: part of the cost of a mapped
    scan). The sum is checked afterwards, and that no mapping of ``path`` is left."""

    def make():
        def run():
            before()
            with T.Stopwatch() as sw:
                s, closer = body()
                closer()
            _check_sum(expected, s)
            if path is not None:
                _unmapped(path)
            return sw.sample()
        return run

    return make


def _sum_contenders(ctx, path, before, expected, *, cold):
    """The ways of summing the big file: each runner calls ``before()`` (untimed), then times
    open + first-touch sum + close/unmap."""
    mm = ctx.mm
    rows = ctx.chunk_bytes // 8
    memmap, why_memmap = ctx.feature("memmap")
    chunks, why_chunks = ctx.feature("chunks")

    def timed(body):
        return _timed_body(before, expected, body, path)

    def np_memmap():
        a = np.memmap(path, dtype=np.float64, mode="r")
        return a.sum(), _dropper(a)  # unmapped when the closer runs (timed)

    def stdlib():
        fd = os.open(path, os.O_RDONLY)
        m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        os.close(fd)
        a = np.frombuffer(m, np.float64)
        s = a.sum()
        del a
        return s, m.close

    def mm_plain(**kw):
        def body():
            m = mm.open(path, dtype=np.float64, mode="r", **kw)
            a = m.array
            s = a.sum()
            del a
            return s, m.close
        return body

    def mm_advised(advice):
        def body():
            m = ctx.open_with_advice(path, advice, dtype=np.float64, mode="r")
            a = m.array
            s = a.sum()
            del a
            return s, m.close
        return body

    def mm_chunks():
        m = mm.open(path, dtype=np.float64, mode="r")
        s = 0.0
        for c in m.chunks(rows):
            s += c.sum()
        return s, m.close

    def mm_memmap():
        a = memmap(path, dtype=np.float64, mode="r")
        return a.sum(), _dropper(a)

    cs = [
        Contender("numpy.memmap", "reference", timed(np_memmap)),
        Contender("stdlib mmap + frombuffer", "other", timed(stdlib)),
        Contender("mmarray", "mmarray", timed(mm_plain())),
        Contender("mmarray, fault guard off", "other", _guard_off(ctx, timed(mm_plain()))),
    ]
    if cold:
        cs.append(Contender("mmarray advise=sequential", "mmarray",
                            timed(mm_advised("sequential"))))
    else:
        cs.append(Contender("mmarray populate=True", "mmarray", timed(mm_plain(populate=True))))
    cs.append(Contender(f"mmarray chunks({rows})", "mmarray", timed(mm_chunks),
                        skip=why_chunks, info={"chunk_bytes": ctx.chunk_bytes}))
    cs.append(Contender("mmarray.memmap", "mmarray", timed(mm_memmap), skip=why_memmap))
    return cs


def _cached_sum_case(ctx, state):
    path = ctx.file("big.f64")
    data = ctx.data
    expected = float(data.sum())
    ctx.progress(f"putting {os.path.basename(path)} in the page cache ({state} pages)")
    info, before, restored = _cache_keeper(path, state)
    notes = []
    if not info["verified"]:
        pmd = info["pmd_fraction"]
        notes.append(f"cache state NOT verified: resident {info['resident']:.1%}, "
                     f"PMD-mapped {'?' if pmd is None else f'{pmd:.1%}'} of the file "
                     f"(expected {'0' if state == '4k' else f'>= {T.LARGE_MIN_PMD:.0%}'})")

    def limit_make():
        def run():
            with T.Stopwatch() as sw:
                s = data.sum()
            _check_sum(expected, s)
            return sw.sample()
        return run

    def populate_only():  # the page-table cost alone: what overlapping can hide at best
        m = mm.open(path, dtype=np.float64, mode="r")
        m.advise("populate_read")
        return expected, m.close

    def premapped_make(unmap_timed, rows=None):
        # The file's own pages, mapped and populated before the clock starts: the sum reads
        # them through the page size the cache holds them in. With unmap_timed the unmap
        # follows on the same thread, inside the clock; without it the unmap is left out (a
        # contender may overlap it with the sum on another thread, as it may the faults).
        # With rows, summed as the chunks() contender sums: a[i:i + rows].sum(), added up.
        def run():
            before()
            m = mm.open(path, dtype=np.float64, mode="r")
            a = m.array
            try:
                m.advise("populate_read")
                with T.Stopwatch() as sw:
                    if rows is None:
                        s = a.sum()
                    else:
                        s = 0.0
                        for i in range(0, len(a), rows):
                            s += a[i:i + rows].sum()
                    if unmap_timed:
                        del a
                        m.close()
            finally:
                a = None  # the array first: close() then unmaps at once (idempotent)
                m.close()
            _check_sum(expected, s)
            _unmapped(path)
            return sw.sample()
        return lambda: run

    mm = ctx.mm
    cs = _sum_contenders(ctx, path, before, expected, cold=False)
    cs.append(Contender("populate_read alone, no sum (info)", "other",
                        _timed_body(before, expected, populate_only, path)))
    rows = ctx.chunk_bytes // 8
    if state == "4k":
        name, title = "sum_cached_4k", "first-touch sum of a cached file held in 4 KiB pages"
    else:
        name, title = "sum_cached_large", "first-touch sum of a cached file in large folios"
    # The bound is the sum over the file's own pages, pre-mapped: numpy allocates a large
    # array in 2 MiB pages (madvise(MADV_HUGEPAGE)) while a file held in 4 KiB pages is read
    # through 4 KiB mappings (measured 90-106 vs 65-68 ms per GiB here, no fault taken), and
    # even 2 MiB mappings of the page cache read slower than the in-memory array in some runs
    # of this VM (95 vs 69 ms). The unmap is not in the bound: a second thread can hide it
    # (a review measured a contender tying the sum + unmap on one thread that way). Both
    # other rows stay, for information.
    cs.append(Contender("in-memory np.sum (info)", "other", limit_make))
    cs.append(Contender("pre-mapped pages: sum, then unmap (info)", "other",
                        premapped_make(True)))
    cs.append(Contender("pre-mapped pages: sum", "limit", premapped_make(False)))
    # The chunks() contender sums in pieces of `rows` rows, and numpy's sum in 8 MiB pieces
    # takes about 10% longer than one sum over the whole array, in memory too (15
    # interleaved rounds over 1 GiB: 113 vs 102 ms): its target is judged against the same
    # sum, in the same pieces, over the same pre-mapped pages. Its ratio to the whole-array
    # sum stays in the "vs limit" column.
    cs.append(Contender(f"pre-mapped pages: sum in chunks of {rows} rows", "baseline",
                        premapped_make(False, rows)))
    goal = target("≥0.9× the same chunk-by-chunk sum over the file's pages pre-mapped, "
                  "through Mapping.chunks", [f"mmarray chunks({rows})"], "baseline", 0.9)
    notes.append("timed: open + sum + close/unmap (numpy.memmap: the drop of the array); "
                 "each sample maps the file anew")
    huge = T.anon_huge_fraction(data)
    notes.append("in-memory array: " + ("page size not reported" if huge is None else
                                        f"{huge:.0%} in 2 MiB pages"))
    notes.append("limit: the file's own pages mapped and populated before the clock starts, "
                 "then the sum timed (the same memory every contender reads; the unmap, which "
                 "a second thread can overlap, is not in it: the 'sum, then unmap' row shows "
                 "it on one thread). numpy's in-memory array is other memory, in 2 MiB pages: "
                 "it sums faster than 4 KiB mappings with no fault at all, and in some runs of "
                 "this VM faster than the PMD-mapped file too (why was not measured); it is "
                 "shown for information")
    notes.append(f"the chunks() target is judged against the same pre-mapped pages summed as "
                 f"it sums them, {rows} rows at a time (baseline): numpy's sum in pieces "
                 f"takes longer than one sum over the array, which no mapping can change; "
                 f"its ratio to the whole-array sum is in the 'vs limit' column")
    if state == "large":
        notes.append("a sequential read leaves the first tens of MiB of a file in folios "
                     "smaller than 2 MiB (readahead ramps up): the PMD-mapped fraction in the "
                     "cache line is what the mapped contenders got")
    res = run_case(
        ctx, name, f"{title} ({T.format_bytes(ctx.size)} float64)", "GB/s", cs,
        work=ctx.size, cache_state=_cache_desc(info, restored),
        params={"size": ctx.size, "state_check": info}, rounds=2 * ctx.rounds + 1,
        targets=[goal], notes=notes)
    res["cache_state"] = _cache_desc(info, restored)  # with the restorations, if any
    return [res]


def case_sum_cached_4k(ctx):
    return _cached_sum_case(ctx, "4k")


def case_sum_cached_large(ctx):
    return _cached_sum_case(ctx, "large")


def case_cold_seq(ctx):
    """Cold sequential scan (evicted before every sample)."""
    path = ctx.file("big.f64")
    expected = float(ctx.data.sum())
    size = ctx.size

    def before():
        T.evict_checked(path)

    def read_make(chunk, direct):
        def make():
            flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if direct else 0)
            if direct and not getattr(os, "O_DIRECT", 0):
                raise T.Unavailable("no O_DIRECT on this platform")
            buf = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
            try:  # probe: some file systems refuse O_DIRECT
                fd = os.open(path, flags)
                os.preadv(fd, [buf], 0)
                os.close(fd)
            except OSError as exc:
                raise T.Unavailable(f"O_DIRECT refused: {exc}") from None

            def run():
                before()
                with T.Stopwatch() as sw:
                    fd = os.open(path, flags)
                    off = 0
                    while True:
                        n = os.preadv(fd, [buf], off)
                        if n <= 0:
                            break
                        off += n
                    os.close(fd)
                if off != size:
                    raise AssertionError(f"read {off} bytes, expected {size}")
                return sw.sample()
            return run
        return make

    cs = _sum_contenders(ctx, path, before, expected, cold=True)
    cs.append(Contender("read() 1 MiB buffers", "baseline", read_make(1 << 20, False)))
    cs.append(Contender("O_DIRECT 4 MiB reads", "baseline", read_make(4 << 20, True)))
    rows = ctx.chunk_bytes // 8
    return [run_case(
        ctx, "cold_seq_scan", f"cold sequential scan + sum ({T.format_bytes(size)} float64)",
        "GB/s", cs, work=size,
        cache_state="cold: evicted (fsync + POSIX_FADV_DONTNEED) and checked with mincore "
                    "before every sample",
        params={"size": size},
        targets=[target("≥0.95× the plain reads (best of read()/O_DIRECT)",
                        [f"mmarray chunks({rows})", "mmarray advise=sequential"], "baseline",
                        0.95)],
        notes=["baseline = per round the best of read() and O_DIRECT (no computation); mapped "
               "contenders also sum the data. A baseline, not a limit: a mapping's first "
               "touch (fault-around plus readahead) can read faster than one read() stream",
               "timed: open + scan + close/unmap (numpy.memmap: the drop of the array)"])]


def case_cold_random(ctx):
    """Cold random 4 KiB reads (evicted before every sample)."""
    path = ctx.file("big.f64")
    size = ctx.size
    n = min(ctx.random_reads, size // T.PAGE // 4)
    rng = np.random.default_rng(20240601)
    offsets = [int(o) * T.PAGE for o in rng.choice(size // T.PAGE, size=n, replace=False)]
    mm = ctx.mm
    resident_after = {}

    def sample(name, body):
        def make():
            def run():
                T.evict_checked(path)
                with T.Stopwatch() as sw:
                    closer = body()
                    closer()
                _unmapped(path)
                resident_after[name] = T.resident_fraction(path)
                return sw.sample()
            return run
        return make

    def touch_all(a):
        # Through a plain ndarray for every contender: numpy.memmap's own __getitem__ costs
        # about 0.5 us more per read (a Python call), which is not the read path measured here.
        v = a if type(a) is np.ndarray else a.view(np.ndarray)
        for o in offsets:
            v[o]

    def np_memmap():
        a = np.memmap(path, dtype=np.uint8, mode="r")
        touch_all(a)
        return _dropper(a)

    def np_memmap_random():
        # The same advice mmarray's advise="random" gives, through numpy.memmap's own mmap
        # object: what a numpy.memmap user can do by hand.
        a = np.memmap(path, dtype=np.uint8, mode="r")
        a._mmap.madvise(madv_random)
        touch_all(a)
        return _dropper(a)

    def stdlib(advice):
        def body():
            fd = os.open(path, os.O_RDONLY)
            m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            os.close(fd)
            if advice is not None:
                m.madvise(advice)
            a = np.frombuffer(m, np.uint8)
            touch_all(a)
            del a
            return m.close
        return body

    def mm_body(advice):
        def body():
            if advice is None:
                m = mm.open(path, mode="r")
            else:
                m = ctx.open_with_advice(path, advice, mode="r")
            a = m.array
            touch_all(a)
            del a
            return m.close
        return body

    def pread_body():
        fd = os.open(path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for o in offsets:
            os.pread(fd, T.PAGE, o)
        return lambda: os.close(fd)

    madv_random = getattr(mmap, "MADV_RANDOM", None)
    cs = [
        Contender("numpy.memmap", "reference", sample("numpy.memmap", np_memmap)),
        Contender("numpy.memmap + MADV_RANDOM (by hand)", "other",
                  sample("numpy.memmap + MADV_RANDOM (by hand)", np_memmap_random),
                  skip=None if madv_random is not None else "no mmap.MADV_RANDOM"),
        Contender("stdlib mmap", "other", sample("stdlib mmap", stdlib(None))),
        Contender("stdlib mmap + MADV_RANDOM", "other",
                  sample("stdlib mmap + MADV_RANDOM", stdlib(madv_random)),
                  skip=None if madv_random is not None else "no mmap.MADV_RANDOM"),
        Contender("mmarray", "mmarray", sample("mmarray", mm_body(None))),
        Contender("mmarray advise=random", "mmarray",
                  sample("mmarray advise=random", mm_body("random"))),
        Contender("pread + POSIX_FADV_RANDOM", "baseline",
                  sample("pread + POSIX_FADV_RANDOM", pread_body)),
    ]
    res = run_case(
        ctx, "cold_random_4k", f"cold random 4 KiB reads ({n} of {T.format_bytes(size)})",
        "kIOPS", cs, work=n,
        cache_state="cold: evicted and checked with mincore before every sample",
        params={"reads": n, "size": size},
        targets=[target("mmarray advise='random' ≥0.9× pread IOPS", "mmarray advise=random",
                        "baseline", 0.9)],
        notes=["one byte touched per page (the fault reads the page) vs pread of 4 KiB; "
               "timed: open + the reads + close/unmap; every mapped contender is indexed "
               "through a plain ndarray (numpy.memmap's own indexing adds a Python call per "
               "read)",
               "pread is a baseline, not a limit: one stream of synchronous reads, which a "
               "mapping with readahead off matches or beats (the real bound, a deep queue "
               "of reads, is not measured)",
               "the gain of advise='random' over numpy.memmap is the advice (readahead off), "
               "made easy, not a faster read path: numpy.memmap given the same MADV_RANDOM by "
               "hand (through its _mmap) reads as fast"])
    res["notes"].append("fraction of the file cached after a sample (readahead): " + ", ".join(
        f"{k} {v:.0%}" for k, v in resident_after.items()))
    for e in res["contenders"]:
        if e["name"] in resident_after:
            e["info"]["resident_after"] = resident_after[e["name"]]
    return [res]


_LIVE_SCRIPT = r"""
import json, mmap, os, resource, sys, time
import numpy as np
kind, path, npy, cap = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard) if hard > 0 else 1024, hard))
import mmarray
keep, error = [], None
t0 = time.perf_counter()
try:
    for i in range(cap):
        if kind == "numpy.memmap":
            keep.append(np.memmap(path, dtype=np.uint8, mode="r"))
        elif kind == "np.load(mmap_mode='r')":
            keep.append(np.load(npy, mmap_mode="r"))
        elif kind == "stdlib mmap + frombuffer":
            fd = os.open(path, os.O_RDONLY)
            try:
                m = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            finally:
                os.close(fd)
            keep.append(np.frombuffer(m, np.uint8))
        elif kind == "mmarray":
            keep.append(mmarray.open(path, mode="r").array)
        elif kind == "mmarray.memmap":
            keep.append(mmarray.memmap(path, dtype=np.uint8, mode="r"))
        elif kind == "mmarray.load":
            r = mmarray.load(npy, **json.loads(sys.argv[5]))
            keep.append(r.array if hasattr(r, "array") and hasattr(r, "close") else r)
        else:
            raise SystemExit("unknown kind " + kind)
except Exception as exc:
    error = type(exc).__name__ + ": " + str(exc)
elapsed = time.perf_counter() - t0
# every kept array must still be readable: touch one element of each
total = 0
for a in keep:
    total += int(a.reshape(-1)[:1].view(np.uint8)[0])
print(json.dumps({"count": len(keep), "error": error, "seconds": elapsed,
                  "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
sys.stdout.flush()
os._exit(0)  # counted: skip unmapping tens of thousands of mappings one by one
"""


def case_live_mappings(ctx):
    """How many mappings can be live at once under RLIMIT_NOFILE=1024 (one subprocess each)."""
    path = ctx.file("small.bin")
    npy = ctx.file("small.npy")
    cap = ctx.live_cap
    load, why_load = ctx.feature("load")
    memmap, why_memmap = ctx.feature("memmap")
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            max_maps = int(f.read())
    except (OSError, ValueError):
        max_maps = None
    env = dict(os.environ)
    pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(ctx.mm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH")) if p)
    kinds = [("numpy.memmap", "reference", None), ("np.load(mmap_mode='r')", "other", None),
             ("stdlib mmap + frombuffer", "other", None), ("mmarray", "mmarray", None),
             ("mmarray.memmap", "mmarray", why_memmap), ("mmarray.load", "mmarray", why_load)]
    load_kw = json.dumps(_load_kwargs(load) if load is not None else {})
    results, procs = [], {}
    try:
        # Each contender in its own subprocess, all at once: they only count, and two cores
        # halve the wall time.
        for kind, role, skip in kinds:
            e = {"name": kind, "role": role, "status": "ok", "reason": None, "info": {},
                 "samples_s": [], "median": None, "min": None, "max": None, "median_s": None,
                 "vs_reference": None, "vs_limit": None}
            results.append(e)
            if skip:
                e.update(status="skipped", reason=skip)
                continue
            try:
                procs[kind] = subprocess.Popen(
                    [sys.executable, "-c", _LIVE_SCRIPT, kind, path, npy, str(cap), load_kw],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            except OSError as exc:
                e.update(status="error", reason=f"{type(exc).__name__}: {exc}")
        for e in results:
            proc = procs.get(e["name"])
            if proc is None:
                continue
            ctx.progress(f"live_mappings: {e['name']} (cap {cap})")
            try:
                stdout, stderr = proc.communicate(timeout=600)
                lines = stdout.strip().splitlines()
                if proc.returncode != 0 or not lines:
                    raise RuntimeError(f"exit {proc.returncode}: {stderr.strip()[-300:]}")
                out = json.loads(lines[-1])
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                e.update(status="error", reason=f"{type(exc).__name__}: {exc}")
                continue
            count = out["count"]
            e.update(median=count, min=count, max=count, n=1)
            e["info"] = {"stopped_by": out["error"] or f"cap {cap} reached",
                         "seconds": out["seconds"], "nofile": out["nofile"]}
            e["reason"] = out["error"]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ref = results[0]["median"]
    for e in results:
        if e["median"] is not None:
            if ref:
                e["vs_reference"] = e["median"] / ref
            if max_maps:
                e["vs_limit"] = e["median"] / max_maps
    if max_maps:
        results.append({"name": "vm.max_map_count", "role": "limit", "status": "ok",
                        "reason": None, "info": {"from": "/proc/sys/vm/max_map_count"},
                        "samples_s": [], "median": max_maps, "min": max_maps, "max": max_maps,
                        "median_s": None, "vs_reference": max_maps / ref if ref else None,
                        "vs_limit": 1.0})
    result = {"name": "live_mappings", "title": "live mappings at once under RLIMIT_NOFILE=1024",
              "unit": "count", "kind": "count", "cache_state": "n/a",
              "params": {"cap": cap, "rlimit_nofile": 1024},
              "notes": [f"attempt capped at {cap}; each contender in its own subprocess (run side "
                        f"by side); every kept array is read once at the end",
                        "stopped by: " + "; ".join(
                            f"{e['name']}: {e['info'].get('stopped_by')}" for e in results
                            if e["info"].get("stopped_by"))],
              "reference": "numpy.memmap", "limit": "vm.max_map_count" if max_maps else None,
              "contenders": results}
    t = target("≥60,000 live mappings", "mmarray", "value", 60_000)
    ev = evaluate_target(result, t)
    if ev["status"] == "fail" and cap < 60_000 and results[3]["median"] == cap:
        ev.update(status="n/a", reason=f"attempt capped at {cap}")
    result["targets"] = [ev]
    return [result]


def case_write_durable(ctx):
    """Write the big array through a mapping + durable flush, vs write() + fsync."""
    path = ctx.path("write.f64")
    data = ctx.data
    n = data.size
    size = data.nbytes
    mm = ctx.mm
    memmap, why_memmap = ctx.feature("memmap")

    def remove():
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        os.sync()  # let the file system finish freeing the blocks before the next sample

    def timed(body):
        def make():
            def run():
                remove()
                with T.Stopwatch() as sw:
                    closer = body()
                    closer()
                _unmapped(path)
                if os.path.getsize(path) != size:
                    raise AssertionError(f"{path} has {os.path.getsize(path)} bytes, "
                                         f"expected {size}")
                remove()
                return sw.sample()
            return run
        return make

    def np_memmap():
        a = np.memmap(path, dtype=np.float64, mode="w+", shape=n)
        a[:] = data
        a.flush()
        return _dropper(a)

    def stdlib():
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(fd, size)
        m = mmap.mmap(fd, size)
        os.close(fd)
        a = np.frombuffer(m, np.float64)
        a[:] = data
        del a
        m.flush()
        return m.close

    def mm_body():
        m = mm.open(path, dtype=np.float64, mode="w+", shape=n)
        a = m.array
        a[:] = data
        del a
        m.flush()
        return m.close

    def mm_memmap():
        a = memmap(path, dtype=np.float64, mode="w+", shape=n)
        a[:] = data
        a.flush()
        return _dropper(a)

    def write_fsync():
        T.write_file(path, data)
        return lambda: None

    cs = [
        Contender("numpy.memmap", "reference", timed(np_memmap)),
        Contender("stdlib mmap + frombuffer", "other", timed(stdlib)),
        Contender("mmarray", "mmarray", timed(mm_body)),
        Contender("mmarray.memmap", "mmarray", timed(mm_memmap), skip=why_memmap),
        Contender("write() 8 MiB + fsync", "baseline", timed(write_fsync)),
    ]
    try:
        return [run_case(
            ctx, "write_durable", f"write {T.format_bytes(size)} + durable flush (new file)",
            "GB/s", cs, work=size, cache_state="new file each sample (removed after)",
            params={"size": size}, warmup=1,
            targets=[target("≥0.95× write() + fsync", "mmarray", "baseline", 0.95)],
            notes=["timed: create + copy in + durable flush (msync MS_SYNC / fsync) + close "
                   "and unmap (write(): its close); one warm-up round not counted",
                   "write() + fsync is a baseline, not a limit: one stream of writes; several "
                   "writers (or a deeper queue) can be faster",
                   "this disk's write speed varies a lot between samples: read the median "
                   "ratio, not single samples"])]
    finally:
        remove()


# -- sharing arrays with worker processes ------------------------------------------------------

def _cache_keeper(path, state):
    """Put ``path`` in the page cache in ``state`` (see ``_timing.set_cache_state``); return
    ``(info, before, restored)``: ``before()`` runs untimed before each sample and restores the
    state if pages were dropped since (``restored`` lists how much was left each time)."""
    info = T.set_cache_state(path, state)
    restored = []

    def before():
        frac = T.resident_fraction(path)
        if frac < 0.99:
            again = T.set_cache_state(path, state)
            restored.append(f"{frac:.1%}")
            if not again["verified"]:
                raise T.Invalid(f"file no longer fully cached ({frac:.1%}) and the {state} "
                                f"state could not be restored; sample dropped")

    return info, before, restored


def _cache_desc(info, restored):
    text = (T.describe_cache_state(info) + "; checked (and restored if needed) before every "
            "sample; every contender reads the same file")
    if restored:
        text += f"; restored {len(restored)} time(s) ({', '.join(restored)} resident)"
    return text


#: The task functions the workers run. They are written into the run's work directory as a
#: module the workers import by name: they cannot import the cases of a ``--bench-dir``, and
#: an installed mmarray.bench may be another version.
_TASKS_MODULE = "_mmarray_bench_share_tasks"
_TASKS_SOURCE = '''"""Task functions of mmarray's share benchmark (from mmarray.bench.cases)."""
import os
import time

import numpy as np


def warm(objects, delay):
    import mmarray  # noqa: F401  (what unpickling the mmarray contenders' arguments needs)

    for obj in objects:
        np.asarray(obj).reshape(-1)[:1].sum()
    time.sleep(delay)  # holds this worker, so that the next warm task goes to another one
    return os.getpid()


def sum_array(a):
    """A numpy.memmap or mmarray.memmap slice, or an mmarray.ArrayRef."""
    return float(np.asarray(a).sum(dtype=np.float64))


def sum_rows(m, lo, hi):
    """An mmarray.Mapping and a row range."""
    return float(np.asarray(m[lo:hi]).sum(dtype=np.float64))


def sum_range(path, offset, count):
    """Only where the data is: the worker maps it with numpy.memmap."""
    a = np.memmap(path, dtype=np.float32, mode="r", offset=offset, shape=(count,))
    return float(a.sum(dtype=np.float64))
'''


@contextlib.contextmanager
def _tasks_module(ctx):
    """Write :data:`_TASKS_SOURCE` into the work directory, put that on ``sys.path`` (which
    spawned workers inherit) and import it; undone on exit."""
    directory = ctx.path("share-tasks")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, _TASKS_MODULE + ".py"), "w") as f:
        f.write(_TASKS_SOURCE)
    sys.path.insert(0, directory)
    importlib.invalidate_caches()
    sys.modules.pop(_TASKS_MODULE, None)
    try:
        yield importlib.import_module(_TASKS_MODULE)
    finally:
        sys.modules.pop(_TASKS_MODULE, None)
        if directory in sys.path:
            sys.path.remove(directory)


class _Way:
    """How a contender hands each task its rows. Per sample: ``open()`` (timed) returns a
    handle, ``tasks(handle)`` each task's arguments for the task function ``fn``, and
    ``close(handle)`` (untimed) releases it."""

    def __init__(self, name, role, fn, open, tasks, close=None, skip=None):
        self.name, self.role, self.fn, self.skip = name, role, fn, skip
        self.open, self.tasks, self.close = open, tasks, close or (lambda h: None)


def _share_ways(ctx, path, shape):
    mm = ctx.mm
    rows, cols = shape
    per = rows // SHARE_TASKS
    spans = [(k * per, (k + 1) * per) for k in range(SHARE_TASKS)]
    memmap, why_memmap = ctx.feature("memmap")
    ref = getattr(mm, "ref", None)
    f32 = np.float32

    def np_open():
        return np.memmap(path, dtype=f32, mode="r", shape=shape)

    def mm_open():
        return mm.open(path, dtype=f32, mode="r", shape=shape)

    def mmm_open():
        return memmap(path, dtype=f32, mode="r", shape=shape)

    def close(m):
        m.close()

    def slices(a):
        return [(a[lo:hi],) for lo, hi in spans]

    return [
        _Way("numpy.memmap", "reference", "sum_array", np_open, slices),
        _Way("Mapping", "mmarray", "sum_rows", mm_open,
             lambda m: [(m, lo, hi) for lo, hi in spans], close),
        _Way("ArrayRef", "mmarray", "sum_array", mm_open,
             lambda m: [(ref(m.array[lo:hi]),) for lo, hi in spans], close,
             skip=None if ref else "not available: mmarray.ref does not exist yet"),
        _Way("mmarray.memmap", "mmarray", "sum_array", mmm_open, slices, skip=why_memmap),
        _Way("path, offset, count", "baseline", "sum_range", lambda: None,
             lambda h: [(path, lo * cols * 4, (hi - lo) * cols) for lo, hi in spans]),
    ]


def _warm_objects(ctx, path, shape):
    """One small argument of each kind, for the workers to unpickle while warming up."""
    mm = ctx.mm
    objs = [np.memmap(path, dtype=np.float32, mode="r", shape=shape)[:1]]
    m = mm.open(path, dtype=np.float32, mode="r", shape=shape)
    objs.append(m)
    if getattr(mm, "ref", None):
        objs.append(mm.ref(m.array[:1]))
    memmap = ctx.feature("memmap")[0]
    if memmap is not None:
        objs.append(memmap(path, dtype=np.float32, mode="r", shape=shape)[:1])
    return objs, m


class _PoolBackend:
    """multiprocessing's spawn Pool: arguments pickled with ForkingPickler (plain pickle)."""

    title = "multiprocessing spawn Pool(2).starmap, chunksize 1"
    pickler = "multiprocessing ForkingPickler (pickle)"

    def __init__(self, W, timeout):
        import multiprocessing

        self.W, self.timeout = W, timeout
        self.pool = multiprocessing.get_context("spawn").Pool(SHARE_WORKERS)

    def run(self, fn, tasks):
        return self.pool.starmap_async(fn, tasks, chunksize=1).get(self.timeout)

    def measure(self, fn, tasks, check):
        """Bytes pickled per task: its arguments, and the whole message Pool sends for it
        (``(job, i, starmapstar, ((fn, (args,)),), {})``, as ``Pool._map_async`` builds it)."""
        from multiprocessing.pool import starmapstar
        from multiprocessing.reduction import ForkingPickler

        args = [len(ForkingPickler.dumps(a)) for a in tasks]
        msgs = [len(ForkingPickler.dumps((0, i, starmapstar, ((fn, (a,)),), {})))
                for i, a in enumerate(tasks)]
        return args, msgs

    def close(self, ok):
        if ok:
            self.pool.close()
        else:
            self.pool.terminate()
        self.pool.join()


class _JoblibBackend:
    """joblib's loky backend: cloudpickle plus joblib's reducers (numpy.memmap-backed arrays
    travel as file + offset)."""

    title = "joblib Parallel(n_jobs=2, backend='loky', batch_size=1)"
    pickler = "loky's pickler (cloudpickle) with the executor's job reducers"

    def __init__(self, W, timeout):
        self.W, self.timeout = W, timeout
        self._start()

    def _start(self):
        # joblib and cloudpickle are imported by name: optional, and untyped (mypy).
        joblib = importlib.import_module("joblib")
        self.delayed = joblib.delayed
        self.parallel = joblib.Parallel(n_jobs=SHARE_WORKERS, backend="loky",
                                        batch_size=1, timeout=self.timeout)
        self.parallel.__enter__()

    def executor(self):
        return getattr(getattr(self.parallel, "_backend", None), "_workers", None)

    def restart(self):
        """A reusable executor started before this case lacks the tasks module on its
        workers' path: shut it down and start afresh."""
        self.close(False)
        self._start()

    def run(self, fn, tasks):
        return self.parallel(self.delayed(fn)(*a) for a in tasks)

    def measure(self, fn, tasks, check):
        """Bytes per task: its arguments pickled with the call queue's pickler and reducers,
        and the messages the call queue actually sent (recorded in an untimed run)."""
        queues = importlib.import_module("joblib.externals.loky.backend.queues")
        reduction = importlib.import_module("joblib.externals.loky.backend.reduction")

        ex = self.executor()
        reducers = getattr(getattr(ex, "_call_queue", None), "_reducers", None)
        if reducers is None:
            raise RuntimeError("cannot find the loky call queue's reducers (joblib changed?)")
        args = [len(reduction.dumps(a, reducers=reducers)) for a in tasks]
        msgs = []
        original = queues.dumps

        def recording(obj, *a, **kw):
            data = original(obj, *a, **kw)
            if type(obj).__name__ == "_CallItem":
                msgs.append(len(data))
            return data

        queues.dumps = recording
        try:
            got = self.run(fn, tasks)
        finally:
            queues.dumps = original
        check(got)
        return args, msgs or None

    def close(self, ok):
        ex = self.executor()
        self.parallel.__exit__(None, None, None)
        if ex is not None:  # the workers are ours: do not leave them idling for 300 s
            try:
                ex.shutdown(wait=True, kill_workers=True)
            except TypeError:
                ex.shutdown(wait=True)


def _check_task_sums(expected, got):
    """Each task's float64 sum must be exact: the values are integers and every partial sum
    stays below 2**53, so any order of summation gives exactly the expected sum."""
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} results for {len(expected)} tasks")
    for k, (e, g) in enumerate(zip(expected, got)):
        if g != e:
            raise AssertionError(f"task {k}: wrong sum {g!r}, expected {e!r}")


def _median_or_none(values):
    return statistics.median(values) if values else None


def _cpu_notes(res, what):
    parts = []
    for e in res["contenders"]:
        info = e["info"]
        p, c = info.get("cpu_parent_s"), info.get("cpu_children_s")
        info["cpu_parent_median_s"] = _median_or_none(p)
        info["cpu_children_median_s"] = _median_or_none(c)
        if p:
            parts.append(f"{e['name']} {info['cpu_parent_median_s']:.3f} / "
                         f"{info['cpu_children_median_s']:.3f}")
    if parts:
        res["notes"].append(f"CPU seconds per sample, median: this process (time.process_time, "
                            f"{what}) / its child processes (utime+stime from /proc, 10 ms "
                            f"ticks): " + "; ".join(parts))


def _start_backend(ctx, backend_cls, W, path, shape, timeout):
    """Start the workers and warm them: each imports numpy and mmarray and unpickles one
    small argument of each kind (warm tasks hold their worker a moment, so each worker gets
    one)."""
    warm_objs, warm_map = _warm_objects(ctx, path, shape)
    backend = backend_cls(W, timeout)
    try:
        for attempt in range(6):
            try:
                pids = backend.run(W.warm, [(warm_objs, 0.25)] * SHARE_WORKERS)
            except Exception:
                if attempt or not hasattr(backend, "restart"):
                    raise
                backend.restart()
                continue
            if len(set(pids)) == SHARE_WORKERS:
                break
        backend.pids = T.child_pids()
    except BaseException:
        backend.close(False)
        raise
    finally:
        warm_objs.clear()
        warm_map.close()
    return backend


def _share_result(ctx, name, backend_cls, backend_why, W, path, shape, sums, before, cache,
                  rounds):
    """One backend's result: start and warm it, run the ways interleaved, close it."""
    timeout = 60 + ctx.share_size / (1 << 20)
    ways = _share_ways(ctx, path, shape)
    backend, failed = None, None
    measured_by = {}

    def contender(way):
        if way.skip or backend_why:
            return Contender(way.name, way.role, skip=way.skip or backend_why)
        if backend is None:
            return Contender(way.name, way.role, _raiser(failed))
        c = Contender(way.name, way.role)
        info = c.info  # the result's entry shares this dict: filled by make() and run()
        fn = getattr(W, way.fn)

        def check(got):
            _check_task_sums(sums, got)

        def make():
            h = way.open()
            tasks = way.tasks(h)
            try:
                args, msgs = backend.measure(fn, tasks, check)
            finally:
                del tasks
                way.close(h)
            info.update(payload_bytes=max(args), payload_bytes_min=min(args),
                        message_bytes=max(msgs) if msgs else None, pickler=backend.pickler)
            measured_by[way.name] = args

            def run():
                before()
                c0, p0 = T.cpu_times(backend.pids), time.process_time()
                with T.Stopwatch() as sw:
                    h = way.open()
                    tasks = way.tasks(h)
                    got = backend.run(fn, tasks)
                p1, c1 = time.process_time(), T.cpu_times(backend.pids)
                del tasks
                way.close(h)
                del h
                check(got)
                info.setdefault("cpu_parent_s", []).append(round(p1 - p0, 6))
                workers = T.cpu_delta(c0, c1)
                info.setdefault("cpu_children_s", []).append(round(workers, 6))
                # the CPU column: this process and its workers (pool workers are not waited
                # for, so the Stopwatch's own reading leaves them out)
                return sw.sample(extra_cpu=workers)
            return run

        c.make = make
        return c

    ok = False
    try:
        if backend_why is None:
            ctx.progress(f"{name}: starting {backend_cls.title}")
            try:
                backend = _start_backend(ctx, backend_cls, W, path, shape, timeout)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failed = f"starting the workers failed: {type(exc).__name__}: {exc}"
        cs = [contender(w) for w in ways]
        mm_names = [w.name for w in ways if w.role == "mmarray"]
        targets = [at_most(f"{n}: ≤1 KiB pickled per task", n, "payload_bytes", 1024, "B")
                   for n in mm_names]
        if name == "share_pool":
            targets = [target(f"{n} ≥20× faster than numpy.memmap", n, "reference", 20.0)
                       for n in mm_names] + targets
        else:
            targets.insert(0, target("mmarray.memmap takes ≤1.2× numpy.memmap's time",
                                     "mmarray.memmap", "reference", 1 / 1.2, as_time=True))
        rows, cols = shape
        res = run_case(
            ctx, name, f"{SHARE_TASKS} tasks each summing 1/{SHARE_TASKS} of the rows of a "
                       f"{T.format_bytes(ctx.share_size)} float32 file on {SHARE_WORKERS} "
                       f"workers ({backend_cls.title})",
            "ms", cs, rounds=rounds, cache_state=cache(), targets=targets,
            params={"size": ctx.share_size, "shape": [rows, cols], "dtype": "float32",
                    "tasks": SHARE_TASKS, "workers": SHARE_WORKERS, "rounds": rounds},
            notes=[f"timed: open the file in this process, build the {SHARE_TASKS} tasks' "
                   f"arguments, send them and get the {SHARE_TASKS} sums back (each checked "
                   f"against the exact sum); the workers were started and warmed before "
                   f"(numpy and mmarray imported, one small argument of each kind "
                   f"unpickled); closing is not timed",
                   "tasks get: numpy.memmap / mmarray.memmap: their slice; Mapping: the "
                   "Mapping and a row range; ArrayRef: mmarray.ref(m.array[rows]); limit: "
                   "(path, offset, count), the worker maps with numpy.memmap itself",
                   f"{rounds} round(s) only: under Pool the numpy.memmap contender pickles "
                   f"its slices by value (seconds per round at 512 MiB)"
                   if name == "share_pool" else
                   "joblib sends numpy.memmap slices as file + offset (its own reducer); each "
                   "contender ran once untimed before the rounds (recording what loky's "
                   "call queue sent); joblib polls for results every 10 ms, so these times "
                   "move in steps of about 10 ms"])
        sized = [e for e in res["contenders"] if e["info"].get("payload_bytes") is not None]
        for e in sized:
            e["info"]["payload_bytes_per_task"] = measured_by.get(e["name"])
        if sized:
            res["notes"].append(
                f"bytes pickled per task ({backend_cls.pickler}): arguments / whole message: "
                + "; ".join(f"{e['name']} {e['info']['payload_bytes']:,} / "
                            + (f"{e['info']['message_bytes']:,}"
                               if e["info"]["message_bytes"] else "n/a") for e in sized))
        _cpu_notes(res, "with Pool's task and result threads" if name == "share_pool"
                   else "with loky's queue threads")
        ok = True
        return res
    finally:
        if backend is not None:
            backend.close(ok)


def case_share(ctx):
    """Sum a file in 8 tasks on 2 worker processes, handing each its rows 5 ways: under a
    spawn multiprocessing.Pool and under joblib's loky backend."""
    path, shape, sums = ctx.share_file()
    ctx.progress(f"putting {os.path.basename(path)} in the page cache (large folios)")
    info, before, restored = _cache_keeper(path, "large")

    def cache():
        return _cache_desc(info, restored)

    try:
        importlib.import_module("joblib")
        why_joblib = None
    except ImportError as exc:
        why_joblib = f"not available: joblib is not installed (pip install joblib): {exc}"
    out = []
    with _tasks_module(ctx) as W:
        out.append(_share_result(ctx, "share_pool", _PoolBackend, None, W, path, shape, sums,
                                 before, cache, ctx.share_rounds))
        out.append(_share_result(ctx, "share_joblib", _JoblibBackend, why_joblib, W, path,
                                 shape, sums, before, cache, 2 * ctx.share_rounds + 1))
    for r in out:  # restorations in the second result happened after the first was built
        r["cache_state"] = cache()
    return out


def _graph_bytes(x):
    """(bytes, pickler, keys) of the dask array's graph, pickled as a dict: with pickle
    (protocol 5, buffers in band), or cloudpickle if pickle refuses it."""
    graph = dict(x.__dask_graph__())
    try:
        return len(pickle.dumps(graph, protocol=5)), "pickle (protocol 5)", len(graph)
    except Exception:
        cloudpickle = importlib.import_module("cloudpickle")
        return len(cloudpickle.dumps(graph, protocol=5)), "cloudpickle (protocol 5)", len(graph)


def _memmap_chunks(da, path, dtype, shape, chunk_rows):
    """A dask array of ``shape`` over the file at ``path`` whose every chunk is a task that
    maps its own rows with numpy.memmap (nothing of the data in the graph)."""
    import dask

    rows, cols = shape
    itemsize = np.dtype(dtype).itemsize
    blocks = []
    for lo in range(0, rows, chunk_rows):
        n = min(chunk_rows, rows - lo)
        task = dask.delayed(np.memmap, pure=True)(path, dtype=dtype, mode="r",
                                                  offset=lo * cols * itemsize, shape=(n, cols))
        blocks.append(da.from_delayed(task, shape=(n, cols), dtype=dtype))
    return da.concatenate(blocks, axis=0)


def case_dask(ctx):
    """The mean of the share file on a 2-worker distributed.LocalCluster, from dask arrays
    made 3 ways."""
    mm = ctx.mm
    f32 = np.float32
    try:
        import dask.array as da
        from distributed import Client, LocalCluster
        why = None
    except ImportError as exc:
        why = (f"not available: dask and distributed are not installed (pip install "
               f"'mmarray[dask]'): {exc}")
    if why is None:
        path, shape, sums = ctx.share_file()
        ctx.progress(f"putting {os.path.basename(path)} in the page cache (large folios)")
        info, before, restored = _cache_keeper(path, "large")
    else:  # nothing will run: no file to write
        path, shape, sums = None, (ctx.share_size // (4 * SHARE_COLS), SHARE_COLS), None
    rows, cols = shape
    chunk_rows = rows // SHARE_TASKS
    to_dask = getattr(mm, "to_dask", None)
    ways = {  # name -> (role, build(shape, chunk rows) -> dask array, skip)
        "from_array(numpy.memmap)": ("reference", lambda shp, c: da.from_array(
            np.memmap(path, dtype=f32, mode="r", shape=shp), chunks=(c, cols)), None),
        "from_array(Mapping)": ("mmarray", lambda shp, c: da.from_array(
            mm.open(path, dtype=f32, mode="r", shape=shp), chunks=(c, cols)), None),
        "mmarray.to_dask": ("mmarray", lambda shp, c: to_dask(
            path, dtype=f32, shape=shp, chunks=(c, cols)),
            None if to_dask else "not available: mmarray.to_dask does not exist yet"),
        # numpy done by hand: each chunk's task maps only its rows with numpy.memmap (the
        # graph holds path, offset and shape), as a careful numpy user would write it
        "numpy.memmap per chunk (from_delayed)": ("baseline", lambda shp, c: _memmap_chunks(
            da, path, f32, shp, c), None),
    }
    timeout = 60 + ctx.share_size / (1 << 20)
    large_graph = []
    cluster = client = None
    failed = None
    try:
        if why is None:
            ctx.progress("dask: starting a LocalCluster (2 worker processes, 1 thread each)")
            try:
                # Loopback only. The scheduler serves its HTTP routes (no dashboard) even
                # so: on a free port, not 8787 (taken by any other cluster: a warning).
                cluster = LocalCluster(n_workers=SHARE_WORKERS, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address=None,
                                       scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
                client = Client(cluster, set_as_default=False)
                # Warm up: each way on the first 8 rows (imports mmarray and dask's chunk
                # functions in the workers), checked.
                head = float(np.fromfile(path, dtype=f32, count=8 * cols).sum(dtype=np.float64))
                for _, build, skip in ways.values():
                    if not skip:  # two chunks: one for each worker, most likely
                        got = client.compute(build((8, cols), 4).mean(dtype=np.float64))
                        _check_sum(head / (8 * cols), float(got.result(timeout)))
                pids = T.child_pids()
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failed = f"starting the cluster failed: {type(exc).__name__}: {exc}"

        def contender(wname, role, build, skip):
            if skip or why:
                return Contender(wname, role, skip=skip or why)
            if failed:
                return Contender(wname, role, _raiser(failed))
            c = Contender(wname, role)
            cinfo = c.info  # the result's entry shares this dict

            def make():
                x = build(shape, chunk_rows)
                nbytes, pickler, keys = _graph_bytes(x)
                total, _, _ = _graph_bytes(x.mean(dtype=np.float64))
                cinfo.update(graph_bytes=nbytes, graph_keys=keys, graph_pickler=pickler,
                             submitted_graph_bytes=total)
                del x

                def run():
                    before()
                    c0, p0 = T.cpu_times(pids), time.process_time()
                    with warnings.catch_warnings(record=True) as caught:
                        with T.Stopwatch() as sw:
                            x = build(shape, chunk_rows)
                            got = float(client.compute(x.mean(dtype=np.float64))
                                        .result(timeout))
                    p1, c1 = time.process_time(), T.cpu_times(pids)
                    for w in caught:  # "Sending large graph of size 512.00 MiB", once a round
                        if role == "reference" and "large graph" in str(w.message):
                            large_graph.append(str(w.message).splitlines()[0])
                        else:
                            warnings.warn_explicit(w.message, w.category, w.filename,
                                                   w.lineno)
                    del x
                    # the sum is exact (see _check_task_sums), the mean one division
                    if not np.isclose(got, sum(sums) / (rows * cols), rtol=1e-12, atol=0):
                        raise AssertionError(f"wrong mean {got!r}, expected "
                                             f"{sum(sums) / (rows * cols)!r}")
                    cinfo.setdefault("cpu_parent_s", []).append(round(p1 - p0, 6))
                    workers = T.cpu_delta(c0, c1)
                    cinfo.setdefault("cpu_children_s", []).append(round(workers, 6))
                    return sw.sample(extra_cpu=workers)  # the workers' CPU in the column
                return run

            c.make = make
            return c

        cs = [contender(n, role, build, skip) for n, (role, build, skip) in ways.items()]
        mm_names = [n for n, (role, _, _) in ways.items() if role == "mmarray"]
        targets = ([target(f"{n} ≥3× faster than from_array(numpy.memmap)", n, "reference",
                           3.0) for n in mm_names]
                   + [at_most(f"{n}: graph ≤1 MiB", n, "graph_bytes", 1 << 20, "B")
                      for n in mm_names])
        res = run_case(
            ctx, "dask_mean", f"mean of a {T.format_bytes(ctx.share_size)} float32 file on a "
                              f"distributed.LocalCluster ({SHARE_WORKERS} worker processes, "
                              f"1 thread each)",
            "ms", cs, rounds=ctx.dask_rounds, cache_state="n/a", targets=targets,
            params={"size": ctx.share_size, "shape": [rows, cols], "dtype": "float32",
                    "chunks": [chunk_rows, cols], "workers": SHARE_WORKERS,
                    "rounds": ctx.dask_rounds},
            notes=[f"timed: build the dask array (chunks of {chunk_rows} rows: "
                   f"{SHARE_TASKS} chunks), then client.compute(x.mean(dtype=float64))"
                   f".result(), checked; the cluster was started and every way warmed on the "
                   f"first 8 rows before the rounds",
                   f"{ctx.dask_rounds} round(s) only: from_array(numpy.memmap) puts the whole "
                   f"array in the graph (seconds per round at 512 MiB)",
                   "baseline: numpy done by hand, a from_delayed task per chunk that maps "
                   "its own rows with numpy.memmap (what mmarray's ways make easy; no target "
                   "against it)"])
        if why is None:
            res["cache_state"] = _cache_desc(info, restored)
        sized = [e for e in res["contenders"] if e["info"].get("graph_bytes") is not None]
        if sized:
            res["notes"].append(
                f"graph bytes, the array's / the mean's (dict(x.__dask_graph__()) pickled with "
                f"{sized[0]['info']['graph_pickler']}): " + "; ".join(
                    f"{e['name']} {e['info']['graph_bytes']:,} / "
                    f"{e['info']['submitted_graph_bytes']:,}" for e in sized))
        if large_graph:
            res["notes"].append(f"distributed warned {len(large_graph)} time(s) for "
                                f"from_array(numpy.memmap) (silenced): {large_graph[0]!r}")
        _cpu_notes(res, "with the scheduler and the client")
        return [res]
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


def case_append(ctx):
    """Grow a .npy by appending rows (issue #12): mmarray.append_npy against numpy's round
    trip, npy-append-array, and the baseline (write() of the rows plus one header patch)."""
    from numpy.lib import format as npformat

    appends = 40 if ctx.mode == "quick" else 200
    rows = np.arange(1000 * 64, dtype=np.float32).reshape(1000, 64)
    path = ctx.path("append.npy")
    append_npy = getattr(ctx.mm, "append_npy", None)

    def fresh():
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def timed(body):
        def make():
            def run():
                fresh()
                with T.Stopwatch() as sw:
                    body()
                got = np.load(path, mmap_mode="r")
                if got.shape != (appends * 1000, 64) or got[-1, -1] != rows[-1, -1]:
                    raise AssertionError(f"{path} has shape {got.shape}, expected "
                                         f"{(appends * 1000, 64)}")
                del got
                fresh()
                return sw.seconds
            return run
        return make

    def numpy_round_trip():
        np.save(path, rows)
        for _ in range(appends - 1):
            np.save(path, np.concatenate([np.load(path), rows]))

    def mm_append():
        for _ in range(appends):
            append_npy(path, rows)

    def npa():
        try:
            from npy_append_array import NpyAppendArray
        except ImportError as exc:
            raise T.Unavailable(f"npy-append-array is not installed ({exc})") from None
        with NpyAppendArray(path) as out:
            for _ in range(appends):
                out.append(rows)

    def raw_write():
        # The baseline: one header with room, then each append is a write() of the rows and a
        # rewrite of the header's shape in place.
        with open(path, "wb") as f:
            npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                "shape": (0, 64)})
            hlen = f.tell()
            data = rows.tobytes()
            for i in range(appends):
                f.write(data)
                end = f.tell()
                f.seek(0)
                npformat.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                    "shape": ((i + 1) * 1000, 64)})
                if f.tell() != hlen:
                    raise AssertionError("the header changed length")
                f.seek(end)

    def npa_make():
        try:
            import npy_append_array  # noqa: F401
        except ImportError as exc:
            raise T.Unavailable(f"npy-append-array is not installed ({exc})") from None
        return timed(npa)()

    cs = [
        Contender("np.load + concatenate + np.save", "reference", timed(numpy_round_trip)),
        Contender("npy-append-array", "other", npa_make),
        Contender("mmarray.append_npy", "mmarray", timed(mm_append),
                  skip=None if append_npy else "this mmarray has no append_npy"),
        Contender("write() + header patch", "baseline", timed(raw_write)),
    ]
    return [_resize_result(ctx), run_case(
        ctx, "append", f"{appends} appends of 1000 x 64 float32 rows to a .npy", "ms", cs,
        rounds=ctx.rounds, cache_state="new file each sample (removed after)",
        params={"appends": appends, "rows": 1000},
        targets=[target("≥50× faster than numpy's load + concatenate + save", "mmarray.append_npy",
                        "reference", 50.0),
                 target("≤1.5× the baseline's time", "mmarray.append_npy", "baseline", 1 / 1.5,
                        as_time=True)],
        notes=["timed: all the appends from no file to the full one; each sample checked with "
               "np.load", f"{appends} appends ({'quick' if appends < 200 else 'the issue'}'s "
               f"count); numpy's round trip rereads and rewrites the whole file each time"])]


def _resize_result(ctx):
    """Mapping.resize with no array alive, doubling sparse files of 64 MiB, 1 GiB and 8 GiB:
    the time must not grow with the size (Linux mremap moves the view)."""
    sizes = {"64 MiB": 64 << 20, "1 GiB": 1 << 30, "8 GiB": 8 << 30}

    def make(size):
        def setup():
            if getattr(ctx.mm.Mapping, "resize", None) is None:
                raise T.Unavailable("this mmarray has no Mapping.resize")
            path = ctx.path(f"resize-{size}.bin")

            def run():
                with open(path, "wb") as f:
                    f.truncate(2 * size)  # sparse and long enough: the mapping alone is timed
                m = ctx.mm.open(path, mode="r+", shape=size)
                m.array[: 1 << 20] = 1    # the first MiB touched, as a user would have
                with T.Stopwatch() as sw:
                    m.resize(2 * size)
                ok = m.shape == (2 * size,)
                m.close()
                os.unlink(path)
                if not ok:
                    raise AssertionError("resize did not take the new shape")
                return sw.seconds
            return run
        return setup

    cs = [Contender(f"resize {name} to twice", "reference" if size == 64 << 20 else "mmarray",
                    make(size), info={"bytes": size}) for name, size in sizes.items()]
    return run_case(
        ctx, "resize", "Mapping.resize doubling a mapping with no array alive (sparse files)",
        "µs", cs, rounds=max(ctx.rounds, 5), cache_state="new sparse file each sample",
        targets=[target("8 GiB resizes within 3× the time of 64 MiB", "resize 8 GiB to twice",
                        "reference", 1 / 3, as_time=True)],
        notes=["timed: the resize call alone, on a sparse file already twice the mapping's "
               "size, so the mapping is measured, not the allocation (a file that must grow "
               "is allocated first, which takes time in proportion to the growth)"])


#: The cases, in the order they run: (name, function, short description).
CASES = [
    ("open_close_4k", case_open_close, "open + array + close of a 4 KiB file"),
    ("npy_open_close", case_npy_open, ".npy open + close: many distinct files, and one file"),
    ("npz_member_open", case_npz_member, "one .npz member open"),
    ("ops", case_ops, "a[5], a[10:20], a[:100].sum(), a + 1 overheads"),
    ("sum_cached_4k", case_sum_cached_4k, "first-touch sum, cached in 4 KiB pages"),
    ("sum_cached_large", case_sum_cached_large, "first-touch sum, cached in large folios"),
    ("cold_seq_scan", case_cold_seq, "cold sequential scan"),
    ("cold_random_4k", case_cold_random, "cold random 4 KiB reads"),
    ("live_mappings", case_live_mappings, "live mappings under RLIMIT_NOFILE=1024"),
    ("write_durable", case_write_durable, "write + durable flush"),
    ("share", case_share, "8 tasks on 2 worker processes: Pool and joblib"),
    ("dask", case_dask, "mean on a 2-process distributed.LocalCluster"),
    ("append", case_append, "200 appends of rows to a .npy (issue #12)"),
    *_users.CASES,
]

#: Cases that report under other names than their own (``--cases`` matches these too).
RESULT_NAMES = {"npy_open_close": ["npy_open_many_files", "npy_open_many_shapes",
                                   "npy_open_same_file"],
                "ops": [f"op_{key}" for key, _ in OPS], "share": ["share_pool", "share_joblib"],
                "append": ["resize", "append"],
                "dask": ["dask_mean"]}
