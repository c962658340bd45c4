"""What every benchmark case uses: the run presets (:data:`MODES`), the :class:`Context` the
cases share (work directory, sizes, files), :class:`Contender`, :func:`run_case` (interleaved
rounds, ratios) and the targets (:func:`target`, :func:`at_most`).

The cases themselves are in ``cases.py`` (and the modules it lists); see its docstring for the
contender roles and what the ratios mean.
"""
from __future__ import annotations

import inspect
import os
import random
import statistics
import zlib

import numpy as np

from . import _timing as T

# -- context ---------------------------------------------------------------------------------


#: Run lengths: ``python -m mmarray bench`` runs "default", ``--quick`` and ``--full`` the others.
#: ``about``: what the run takes on a 2-core machine (measured; README's Benchmarks section).
#: ``micro_rounds``: rounds of the micro cases (open/close, ops): enough that the middle half of
#: the per-round ratios (shown next to each ratio) is narrow and repeated runs agree;
#: Files of the npy_open_many_shapes case, at least: twice mmarray's header cache (512).
SHAPE_FILES_MIN = 1024
#: ``npy_files``: how many distinct small .npy files the npy_open_close case opens per round;
#: ``share_size``: the float32 file of the share and dask cases (None: ``size``);
#: ``share_rounds`` / ``dask_rounds``: their rounds (few: numpy.memmap's contenders there ship
#: or embed the whole file, seconds per round); ``--rounds`` overrides them too.
MODES = {
    "quick": {"size": 64 << 20, "rounds": 3, "micro_rounds": 15, "micro_target": 0.004,
              "npy_files": 200, "random_reads": 400, "share_size": None, "share_rounds": 3,
              "dask_rounds": 3, "about": "20 s"},
    "default": {"size": 256 << 20, "rounds": 5, "micro_rounds": 51, "micro_target": 0.01,
                "npy_files": 1000, "random_reads": 1000, "share_size": 512 << 20,
                "share_rounds": 3, "dask_rounds": 3, "about": "2.2 min"},
    "full": {"size": 1 << 30, "rounds": 7, "micro_rounds": 75, "micro_target": 0.02,
             "npy_files": 1000, "random_reads": 2000, "share_size": 512 << 20,
             "share_rounds": 5, "dask_rounds": 4, "about": "6.5 min"},
}


class Context:
    """What the cases share: the work directory, sizes, rounds, progress and lazy resources.

    ``mode`` picks a preset of :data:`MODES`; ``size``, ``rounds`` and ``micro_rounds`` override
    it."""

    def __init__(self, workdir, *, mode="default", size=None, rounds=None, micro_rounds=None,
                 progress=None, live_cap=None, random_reads=None, npy_files=None, seed=None):
        import mmarray

        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        preset = MODES[mode]
        self.mm = mmarray
        self.workdir = workdir
        self.mode = mode
        self.size = int(size or preset["size"])
        self.size -= self.size % (1 << 20) or 0
        if self.size < (8 << 20):
            raise ValueError(f"--size must be at least 8 MiB, got {self.size} bytes")
        self.rounds = int(rounds or preset["rounds"])
        # The share/dask file: --size sets it too (a small run is small everywhere).
        self.share_size = self.size if size else int(preset["share_size"] or self.size)
        self.share_rounds = int(rounds or preset["share_rounds"])
        self.dask_rounds = int(rounds or preset["dask_rounds"])
        self.micro_rounds = int(micro_rounds or preset["micro_rounds"])
        self.micro_target = preset["micro_target"]   # seconds per micro batch
        self.live_cap = int(live_cap or 64_000)
        self.random_reads = int(random_reads or preset["random_reads"])
        self.npy_files = int(npy_files or preset["npy_files"])
        # The seed of the contenders' orders (see _timing.interleave): drawn per run unless
        # given, so that order effects average out over runs; recorded with the results.
        self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(1 << 32)
        self.chunk_bytes = 8 << 20
        self.progress = progress or (lambda msg: None)
        self._floor = None
        self._pyfloor = None
        self._data = None
        self._files = {}
        self._share = None
        self.fs_type = T.fs_type(workdir)
        here = os.path.dirname(os.path.abspath(__file__))
        self.floor_source = os.path.join(here, "floor.c")
        self.pyfloor_source = os.path.join(here, "pyfloor.c")

    # resources ------------------------------------------------------------------------------

    def path(self, name):
        return os.path.join(self.workdir, name)

    @property
    def floor(self):
        """(Floor or None, reason)."""
        if self._floor is None:
            self._floor = T.build_floor(self.floor_source, self.workdir)
        return self._floor

    @property
    def pyfloor(self):
        """(the pyfloor extension module or None, reason)."""
        if self._pyfloor is None:
            self._pyfloor = T.build_pyfloor(self.pyfloor_source, self.workdir)
        return self._pyfloor

    @property
    def data(self):
        """The in-memory float64 array of the big file's content (the in-memory limit)."""
        if self._data is None:
            self.progress(f"making {T.format_bytes(self.size)} of data in memory")
            self._data = np.arange(self.size // 8, dtype=np.float64)
            self._data *= 0.5
        return self._data

    def file(self, name):
        """Create (once) and return the path of one of the case files."""
        if name in self._files:
            return self._files[name]
        p = self.path(name)
        if name == "small.bin":
            T.write_file(p, np.arange(4096, dtype=np.uint8))
        elif name == "ops.f64":
            T.write_file(p, np.arange(512, dtype=np.float64))
        elif name == "small.npy":
            np.save(p, np.arange(512, dtype=np.float64))
        elif name == "members.npz":
            np.savez(p, a=np.zeros(16), x=np.arange(131072, dtype=np.float64),
                     c=np.ones((8, 8), dtype=np.int32))
        elif name == "big.f64":
            self.progress(f"writing {T.format_bytes(self.size)} test file")
            T.write_file(p, self.data)
        else:  # pragma: no cover - programming error
            raise KeyError(name)
        self._files[name] = p
        return p

    def npy_dataset(self):
        """Create (once) and return the paths of ``npy_files`` distinct small .npy files
        (``np.arange(512.)`` each, as ``np.save`` writes them): a dataset of many small
        arrays, opened one after the other."""
        if "npy_dataset" not in self._files:
            d = self.path("npyset")
            os.makedirs(d, exist_ok=True)
            self.progress(f"writing {self.npy_files} small .npy files")
            a = np.arange(512, dtype=np.float64)
            paths = []
            for i in range(self.npy_files):
                p = os.path.join(d, f"{i:06d}.npy")
                np.save(p, a)
                paths.append(p)
            self._files["npy_dataset"] = paths
        return list(self._files["npy_dataset"])

    def npy_dataset_shapes(self):
        """Create (once) and return the paths of ``max(npy_files, SHAPE_FILES_MIN)`` small
        .npy files that all differ in shape (file ``i`` holds ``np.arange(512. + i)``): every
        header is another one, and there are more of them than a cache of 512 headers keeps,
        so a cache keyed by the header bytes never hits in a pass over them in order (quick
        runs too). Their headers are all 128 bytes long, as np.save pads them."""
        if "npy_dataset_shapes" not in self._files:
            d = self.path("npyshapes")
            os.makedirs(d, exist_ok=True)
            count = max(self.npy_files, SHAPE_FILES_MIN)
            self.progress(f"writing {count} small .npy files of distinct shapes")
            paths = []
            for i in range(count):
                p = os.path.join(d, f"{i:06d}.npy")
                np.save(p, np.arange(512 + i, dtype=np.float64))
                paths.append(p)
            self._files["npy_dataset_shapes"] = paths
        return list(self._files["npy_dataset_shapes"])

    def share_file(self):
        """(path, shape, per-task sums) of the float32 file of the share and dask cases:
        ``share_size`` bytes, rows of :data:`SHARE_COLS` values, value ``i`` = ``(i * 7919) %
        65521`` (integers, so every float64 sum of them is exact); task ``k`` of
        :data:`SHARE_TASKS` sums the ``k``-th eighth of the rows."""
        if self._share is None:
            p = self.path("share.f32")
            rows = self.share_size // (4 * SHARE_COLS)
            self.progress(f"writing {T.format_bytes(self.share_size)} float32 file for the "
                          f"share/dask cases")
            sums = _write_share_file(p, rows)
            self._share = (p, (rows, SHARE_COLS), sums)
        return self._share

    # mmarray features (some are being added while this harness is written) -------------------

    def feature(self, name):
        """(object or True, None) if mmarray has the feature, else (None, reason)."""
        mm = self.mm
        if name in ("load", "memmap"):
            obj = getattr(mm, name, None)
            return (obj, None) if obj is not None else (None, f"not available: mmarray.{name} "
                                                               f"does not exist yet")
        if name in ("chunks", "prefetch", "evict"):
            obj = getattr(mm.Mapping, name, None)
            return (obj, None) if obj is not None else (None, f"not available: Mapping.{name} "
                                                               f"does not exist yet")
        if name == "open_advise":
            try:
                ok = "advise" in inspect.signature(mm.open).parameters
            except (TypeError, ValueError):
                ok = False
            return (True, None) if ok else (None, "mmarray.open has no advise= yet")
        raise KeyError(name)

    def open_with_advice(self, path, advice, **kw):
        """mmarray.open(..., advise=advice), or open + Mapping.advise when open lacks it."""
        if self.feature("open_advise")[0]:
            return self.mm.open(path, advise=advice, **kw)
        m = self.mm.open(path, **kw)
        m.advise(advice)
        return m


# -- contenders and results ---------------------------------------------------------------------


class Contender:
    """A named way of doing the case's work.

    ``make`` is called once, before the rounds, and returns the runner (a callable returning
    seconds). It may raise :class:`_timing.Unavailable` (reported as skipped) or any other
    exception (reported as an error). ``skip`` skips at once with that reason.
    """

    def __init__(self, name, role="other", make=None, skip=None, info=None):
        self.name = name
        self.role = role
        self.make = make
        self.skip = skip
        self.info = dict(info or {})


def micro(ctx, stmt, namespace):
    """A ``make`` for a micro contender: run ``stmt`` once (so a broken one fails here), then
    calibrate a batch of about ``ctx.micro_target`` seconds."""

    def make():
        T.micro_runner(stmt, namespace, 1)()
        number = T.calibrate(stmt, namespace, ctx.micro_target)
        return T.micro_runner(stmt, namespace, number)

    return make


def _convert(kind, seconds, work, scale):
    if kind == "time":
        return seconds * scale
    return work / seconds / scale


UNITS = {"ns": ("time", 1e9), "µs": ("time", 1e6), "ms": ("time", 1e3),
         "GB/s": ("throughput", 1e9), "kIOPS": ("rate", 1e3)}


def run_case(ctx, name, title, unit, contenders, *, targets=(), cache_state="n/a", notes=(),
             params=None, work=None, rounds=None, warmup=0):
    """Run the contenders interleaved and build the case's result dict."""
    kind, scale = UNITS[unit]
    notes = list(notes)
    rounds = rounds or ctx.rounds
    runners, results = [], []
    for c in contenders:
        entry = {"name": c.name, "role": c.role, "status": "ok", "reason": None,
                 "info": c.info, "samples_s": [], "cpu_samples_s": [], "cpu_source": None,
                 "peak_rss": None}
        results.append(entry)
        if c.skip:
            entry.update(status="skipped", reason=c.skip)
            continue
        try:
            fn = c.make()
        except T.Unavailable as exc:
            entry.update(status="skipped", reason=str(exc))
            continue
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
            continue
        runners.append((c.name, fn))
    ctx.progress(f"{name}: {len(runners)} contenders x {rounds} rounds")
    # each case its own orders, all from the run's seed (a Context of another harness
    # version may have none: the fixed default)
    seed = (getattr(ctx, "seed", T.DEFAULT_SEED) + zlib.crc32(name.encode())) % (1 << 32)
    measured = T.interleave(runners, rounds, progress=ctx.progress, warmup=warmup,
                            label=f"{name}: ", seed=seed)
    by_name = {e["name"]: e for e in results}
    for cname, m in measured.items():
        e = by_name[cname]
        e["samples_s"] = m["samples"]
        e["cpu_samples_s"] = m["cpu"]
        e["cpu_source"] = m["cpu_source"]
        rss = [v for v in m["peak_rss"] if v is not None]
        e["peak_rss"] = max(rss) if rss else None
        if m["errors"]:
            e["status"], e["reason"] = "error", m["errors"][0]
        elif m["invalid"]:
            e["reason"] = m["invalid"][0]
            if all(s is None for s in m["samples"]):
                e["status"] = "invalid"
            notes.append(f"{cname}: {len(m['invalid'])} sample(s) rejected: {m['invalid'][0]}")
    return _finish(ctx, name, title, unit, kind, scale, results, targets, cache_state, notes,
                   params, work)


def cpu_fields(e, kind, scale):
    """Fill the entry's CPU figures from its ``cpu_samples_s`` (aligned with ``samples_s``):
    ``cpu_median_s`` (CPU seconds per sample: per operation in micro cases), ``cpu_median``
    in ``cpu_unit`` (the case's unit when it is a time, else ms) and ``cpu_per_wall`` (median
    over rounds of CPU / wall time: 2 = two cores busy for the whole timed part)."""
    cpu = [c for c, w in zip(e.get("cpu_samples_s") or [], e["samples_s"])
           if c is not None and w is not None]
    per_wall = [c / w for c, w in zip(e.get("cpu_samples_s") or [], e["samples_s"])
                if c is not None and w is not None and w > 0]
    e["cpu_median_s"] = statistics.median(cpu) if cpu else None
    if kind == "time":
        e["cpu_unit"] = next(u for u, (k, sc) in UNITS.items() if k == "time" and sc == scale)
        e["cpu_median"] = None if not cpu else e["cpu_median_s"] * scale
    else:
        e["cpu_unit"] = "ms"
        e["cpu_median"] = None if not cpu else e["cpu_median_s"] * 1e3
    e["cpu_per_wall"] = statistics.median(per_wall) if per_wall else None


#: The roles a ratio is taken against: role -> (entry key, the result's key).
AGAINST = {"reference": "vs_reference", "limit": "vs_limit", "baseline": "vs_baseline"}


def _finish(ctx, name, title, unit, kind, scale, results, targets, cache_state, notes, params,
            work):
    ref = next((e for e in results if e["role"] == "reference"), None)
    ref_samples = ref["samples_s"] if ref and ref["samples_s"] else None
    against = {"reference": ref_samples}
    named = {"reference": ref["name"] if ref else None}
    for role in ("limit", "baseline"):
        group = [e for e in results if e["role"] == role and e["samples_s"]]
        against[role] = T.best_of(*[e["samples_s"] for e in group]) if group else None
        named[role] = " / ".join(e["name"] for e in results if e["role"] == role) or None
    for e in results:
        st = T.stats(e["samples_s"]) if e["samples_s"] else None
        e["median"] = e["min"] = e["max"] = e["median_s"] = None
        for key in AGAINST.values():
            e[key] = e[key + "_iqr"] = None
        e.setdefault("cpu_samples_s", [])
        e.setdefault("cpu_source", None)
        e.setdefault("peak_rss", None)
        if st is None:
            e["cpu_median_s"] = e["cpu_median"] = e["cpu_per_wall"] = None
            e["cpu_unit"] = None
            if e["status"] == "ok":
                e["status"], e["reason"] = "invalid", e["reason"] or "no valid sample"
            continue
        lo, hi = sorted((_convert(kind, st["min"], work, scale),
                         _convert(kind, st["max"], work, scale)))
        e.update(median=_convert(kind, st["median"], work, scale), min=lo, max=hi,
                 median_s=st["median"], n=st["n"])
        for role, key in AGAINST.items():
            if against[role]:
                ratios = T.paired_ratios(against[role], e["samples_s"])
                if ratios:
                    e[key] = statistics.median(ratios)
                    e[key + "_iqr"] = list(T.quartiles(ratios))
        cpu_fields(e, kind, scale)
    result = {"name": name, "title": title, "unit": unit, "kind": kind,
              "cache_state": cache_state, "params": params or {}, "notes": notes,
              "reference": named["reference"], "limit": named["limit"],
              "baseline": named["baseline"], "contenders": results}
    result["targets"] = [evaluate_target(result, t) for t in targets]
    return result


def target(text, contenders, against, minimum, as_time=False):
    """A target: the first of ``contenders`` that produced numbers must reach ``minimum`` as a
    speed ratio against ``against`` ("reference", "limit" or "baseline"), or as a value
    ("value").
    ``as_time``: the target is phrased as a time ratio (≤ 1/minimum times the other's time)."""
    if isinstance(contenders, str):
        contenders = [contenders]
    return {"text": text, "contenders": list(contenders), "against": against, "min": minimum,
            "as_time": as_time}


def at_most(text, contenders, key, maximum, unit=""):
    """A target on a figure in the contender's ``info`` (not a time): the first of
    ``contenders`` that has ``info[key]`` must have it ≤ ``maximum`` (for example the bytes
    pickled per task). Judged whether or not the contender's timing succeeded."""
    if isinstance(contenders, str):
        contenders = [contenders]
    return {"text": text, "contenders": list(contenders), "against": "info", "key": key,
            "max": maximum, "unit": unit}


def _evaluate_at_most(result, t, out):
    out.update(required=t["max"], at_most=True, key=t["key"], unit=t.get("unit", ""))
    by_name = {e["name"]: e for e in result["contenders"]}
    reasons = []
    for cname in t["contenders"]:
        e = by_name.get(cname)
        if e is None:
            continue
        value = e["info"].get(t["key"])
        if value is None:
            reasons.append(f"{cname}: {e['reason'] or t['key'] + ' not measured'}")
            continue
        out.update(contender=cname, measured=value,
                   status="pass" if value <= t["max"] else "fail")
        return out
    out["reason"] = "; ".join(reasons) or "no contender ran"
    return out


def evaluate_target(result, t):
    out = {"text": t["text"], "against": t["against"], "required": t.get("min"),
           "as_time": t.get("as_time", False), "contender": None, "measured": None,
           "status": "n/a", "reason": None}
    if t["against"] == "info":
        return _evaluate_at_most(result, t, out)
    by_name = {e["name"]: e for e in result["contenders"]}
    reasons = []
    for cname in t["contenders"]:
        e = by_name.get(cname)
        if e is None:
            continue
        if e["status"] != "ok" and e["median"] is None:
            reasons.append(f"{cname}: {e['reason'] or e['status']}")
            continue
        key = AGAINST.get(t["against"], "median")
        value = e.get(key)
        if value is None:
            reasons.append(f"{cname}: no {t['against']} to compare with")
            continue
        out.update(contender=cname, measured=value,
                   status="pass" if value >= t["min"] else "fail")
        iqr = e.get(key + "_iqr") if t["against"] != "value" else None
        if iqr:
            # the required ratio inside the middle half of the per-round ratios: the verdict
            # could flip between runs
            out.update(spread=iqr, near=iqr[0] <= t["min"] <= iqr[1])
        return out
    out["reason"] = "; ".join(reasons) or "no contender ran"
    return out


# -- the share and dask cases' file (made by Context.share_file) --------------------------

#: The share and dask cases' file: float32 rows of SHARE_COLS values (4 KiB each), summed by
#: SHARE_TASKS tasks (one eighth of the rows each) on SHARE_WORKERS worker processes.
SHARE_COLS = 1024
SHARE_TASKS = 8
SHARE_WORKERS = 2


def _write_share_file(path, rows):
    """Write the share file (see :meth:`Context.share_file`); return each task's exact sum."""
    if rows < SHARE_TASKS or rows % SHARE_TASKS:
        raise ValueError(f"the share file needs a multiple of {SHARE_TASKS} rows, got {rows}")
    per = rows // SHARE_TASKS * SHARE_COLS
    step = 1 << 21
    sums = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for k in range(SHARE_TASKS):
            total = 0.0
            for start in range(k * per, (k + 1) * per, step):
                i = np.arange(start, min(start + step, (k + 1) * per), dtype=np.int64)
                v = ((i * 7919) % 65521).astype(np.float32)
                total += float(v.sum(dtype=np.float64))  # integers < 2**53: exact
                mv = memoryview(v).cast("B")
                off = 0
                while off < len(mv):
                    off += os.write(fd, mv[off:])
            sums.append(total)
        os.fsync(fd)
    finally:
        os.close(fd)
    return sums
