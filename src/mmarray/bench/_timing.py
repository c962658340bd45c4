"""Timing, statistics and page-cache helpers for the benchmark cases.

Nothing here imports mmarray: the helpers measure and control the machine (interleaved
timing, eviction, residency through mincore, large-folio checks, the C floor library), so
they keep working while mmarray itself is being changed.

Conventions
-----------
* A *runner* is a callable returning the seconds one sample took (seconds per operation for
  micro cases, seconds per whole run for the big ones). It does its own untimed setup (for
  example eviction) and times only the part that counts.
* A runner may raise :class:`Invalid` to reject one sample (for example: eviction did not
  work, so a "cold" figure would be bogus). The sample is dropped and the reason kept.
* Contenders run interleaved: every round runs each contender once, in a new random order
  each round, so a drift of the machine (or the after-effects of one contender on the next)
  hits every contender alike. Ratios are taken
  pair by pair (same round) and the median of the per-round ratios is reported.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import mmap
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import timeit

PAGE = mmap.PAGESIZE


class Invalid(Exception):
    """A sample that must not be reported (the precondition of the measurement failed)."""


class Unavailable(Exception):
    """A contender that cannot run here (missing API, missing compiler, ...)."""


# -- sizes -------------------------------------------------------------------------------

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20,
          "mb": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30}


def parse_size(text):
    """'1G', '256M', '64MiB', '4096' -> bytes (binary units)."""
    s = str(text).strip().lower().replace("_", "")
    num = s.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = s[len(num):]
    if not num or unit not in _UNITS:
        raise ValueError(f"cannot parse size {text!r}; expected e.g. 1G, 256M, 64MiB or bytes")
    value = float(num) * _UNITS[unit]
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return int(value)


def format_bytes(n):
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            v = n / div
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} B"


# -- timing ------------------------------------------------------------------------------

class Sample(float):
    """A runner's result when it measured more than wall time: a float (the wall seconds, so
    every ratio and statistic works on it unchanged) carrying ``cpu_s`` (CPU seconds of all
    the processes and threads that did the work, or None) and ``peak_rss`` (bytes: the peak
    resident set of the process that did the work, or None). A runner that returns a plain
    float leaves both to the harness."""

    cpu_s: float | None
    peak_rss: int | None

    def __new__(cls, seconds, cpu_s=None, peak_rss=None):
        self = super().__new__(cls, seconds)
        self.cpu_s = None if cpu_s is None else float(cpu_s)
        self.peak_rss = None if peak_rss is None else int(peak_rss)
        return self


def micro_runner(stmt, namespace, number, per=1):
    """A runner timing ``number`` executions of ``stmt`` (a string or a callable) with the GC
    off, returning a :class:`Sample`: seconds per operation (one execution does ``per``
    operations, for a statement that loops over ``per`` files, say) carrying the process's
    CPU seconds per operation."""
    timer = timeit.Timer(stmt, globals=namespace)
    ops = number * per

    def run():
        c0 = time.process_time()
        t = timer.timeit(number)
        return Sample(t / ops, cpu_s=(time.process_time() - c0) / ops)

    run.timer = timer
    return run


def cpu_now():
    """CPU seconds (user + system) so far of this process (all its threads) and of its
    terminated, waited-for child processes."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def calibrate(stmt, namespace, target_seconds, max_number=10_000_000):
    """Pick how many executions of ``stmt`` make a batch of about ``target_seconds``."""
    timer = timeit.Timer(stmt, globals=namespace)
    number = 1
    while True:
        t = timer.timeit(number)
        if t >= target_seconds / 5 or number >= max_number:
            break
        number *= 4 if t < target_seconds / 50 else 2
    per = max(t / number, 1e-9)
    return max(1, min(max_number, int(target_seconds / per)))


#: interleave's seed when none is given (a run picks its own: see Context.seed).
DEFAULT_SEED = 20240601


def interleave(runners, rounds, progress=None, warmup=0, label="", seed=DEFAULT_SEED):
    """Run each runner once per round, in a new (seeded, reproducible) random order each
    round. A fixed or merely rotated order would give every contender the same predecessor
    each round, and what ran just before matters (on a virtio disk a cold read right after an
    O_DIRECT scan is measurably slower, for example). The same seed gives the same orders;
    a benchmark run draws its seed anew (and prints it), so that what ran just before a
    contender varies from run to run instead of favouring one of them in every run.

    ``runners`` is a list of ``(name, callable)``. Returns ``{name: {"samples": [...],
    "cpu": [...], "peak_rss": [...], "cpu_source": ..., "errors": [...], "invalid": [...]}}``
    where ``samples`` has one entry per round (None for a round whose sample failed or was
    rejected), so rounds line up across contenders; ``cpu`` and ``peak_rss`` line up with it.

    CPU time: a runner returning a :class:`Sample` with ``cpu_s`` set measured its own (the
    timed part only; it wins). For any other result the harness measures the CPU of this
    process (all threads) and of its waited-for children around the whole call, and scales
    it to the returned seconds (``cpu x returned / wall of the call``: a runner returning
    seconds per operation of a batch gets CPU per operation; untimed setup inside the call
    counts at the call's average CPU use). ``cpu_source`` says which ("runner", "harness"
    or "mixed").
    """
    out = {name: {"samples": [], "cpu": [], "peak_rss": [], "errors": [], "invalid": [],
                  "cpu_source": None} for name, _ in runners}
    broken = set()
    rng = random.Random(seed)
    for r in range(-warmup, rounds):
        order = list(runners)
        rng.shuffle(order)
        for name, fn in order:
            o = out[name]
            if name in broken:
                if r >= 0:
                    o["samples"].append(None)
                    o["cpu"].append(None)
                    o["peak_rss"].append(None)
                continue
            if progress and r >= 0:
                progress(f"{label}round {r + 1}/{rounds}: {name}")
            cpu = rss = None
            try:
                c0, w0 = cpu_now(), time.perf_counter()
                t = fn()
                w1, c1 = time.perf_counter(), cpu_now()
                if t is not None:
                    cpu = getattr(t, "cpu_s", None)
                    rss = getattr(t, "peak_rss", None)
                    source = "runner"
                    if cpu is None:
                        wall = w1 - w0
                        cpu = (c1 - c0) * (min(float(t) / wall, 1.0) if wall > 0 else 1.0)
                        source = "harness"
                    if r >= 0:
                        prev = o["cpu_source"]
                        o["cpu_source"] = source if prev in (None, source) else "mixed"
                    t = float(t)
            except Invalid as exc:
                t = None
                o["invalid"].append(str(exc))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a contender that breaks must not stop the others
                t = None
                o["errors"].append(f"{type(exc).__name__}: {exc}")
                broken.add(name)
            if r >= 0:
                o["samples"].append(t)
                o["cpu"].append(cpu if t is not None else None)
                o["peak_rss"].append(rss if t is not None else None)
    return out


def stats(samples):
    """median/min/max of the valid samples, or None if there are none."""
    good = [s for s in samples if s is not None]
    if not good:
        return None
    return {"median": statistics.median(good), "min": min(good), "max": max(good),
            "n": len(good)}


def paired_ratios(ref, other):
    """The per-round ratios ref[i] / other[i] (speed ratios: > 1 means ``other`` is faster),
    for the rounds where both are present."""
    return [a / b for a, b in zip(ref, other) if a is not None and b is not None and b > 0]


def paired_speed_ratio(ref, other):
    """Median over rounds of ref[i] / other[i] (a speed ratio: > 1 means `other` is faster).

    Both are per-round sample lists (seconds); rounds where either is missing are skipped.
    """
    ratios = paired_ratios(ref, other)
    if not ratios:
        return None
    return statistics.median(ratios)


def quartiles(values):
    """(first quartile, third quartile) of the values (inclusive method: within min-max),
    or None if there are none."""
    good = sorted(v for v in values if v is not None)
    if not good:
        return None
    if len(good) == 1:
        return (good[0], good[0])
    q = statistics.quantiles(good, n=4, method="inclusive")
    return (q[0], q[2])


def best_of(*sample_lists):
    """Per-round minimum over several sample lists (the best of several limit methods)."""
    out = []
    for vals in zip(*sample_lists):
        good = [v for v in vals if v is not None]
        out.append(min(good) if good else None)
    return out


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` using perf_counter, GC off inside.

    Also measures the CPU seconds spent inside (``sw.cpu``: this process's threads and its
    waited-for children, see :func:`cpu_now`); ``sw.sample()`` returns both as a
    :class:`Sample`."""

    def __enter__(self):
        self._gc = gc.isenabled()
        gc.disable()
        self._c0 = cpu_now()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._t0
        self.cpu = cpu_now() - self._c0
        if self._gc:
            gc.enable()
        return False

    def sample(self, extra_cpu=0.0, peak_rss=None):
        """The wall seconds as a :class:`Sample` with the CPU seconds (plus ``extra_cpu``:
        CPU of processes the harness does not wait for, such as pool workers)."""
        return Sample(self.seconds, cpu_s=self.cpu + extra_cpu, peak_rss=peak_rss)


# -- CPU time of worker processes ---------------------------------------------------------------

def child_pids(pid=None):
    """The processes descended from ``pid`` (default: this one), read from
    ``/proc/<pid>/task/<tid>/children`` (Linux); empty where the kernel does not say."""
    pid = os.getpid() if pid is None else pid
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in out:
                    out.append(k)
                    todo.append(k)
    return out


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_times(pids):
    """``{pid: user + system CPU seconds}`` from ``/proc/<pid>/stat`` (clock-tick resolution,
    10 ms on most kernels), for those of ``pids`` that still exist."""
    out = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            fields = stat[stat.rindex(")") + 2:].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_delta(before, after):
    """CPU seconds spent between two :func:`cpu_times` readings by the processes in both."""
    return sum(after[p] - before[p] for p in before if p in after)


# -- page cache ----------------------------------------------------------------------------

_libc = None


def libc():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc.mincore.restype = ctypes.c_int
    return _libc


def fs_type(path):
    """File system type holding ``path`` (from /proc/mounts), or None if unknown."""
    try:
        path = os.path.realpath(path)
        best, kind = "", None
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mnt = parts[1].replace("\\040", " ")
                inside = path == mnt or path.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, parts[2]
        return kind
    except OSError:
        return None


def resident_fraction(path):
    """Fraction of the file's pages in the page cache (mincore through a fresh mapping)."""
    import numpy as np

    size = os.path.getsize(path)
    if size == 0:
        return 1.0
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        view = np.frombuffer(mm, np.uint8)
        npages = (size + PAGE - 1) // PAGE
        vec = np.zeros(npages, np.uint8)
        rc = libc().mincore(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(size),
                            ctypes.c_void_p(vec.ctypes.data))
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mincore failed: {os.strerror(err)}")
        frac = float(np.count_nonzero(vec & 1)) / npages
        del view
    finally:
        mm.close()
    return frac


def evict(path):
    """Drop the file from the page cache: fsync (dirty pages cannot be dropped) then
    POSIX_FADV_DONTNEED. Returns the resident fraction measured afterwards."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return resident_fraction(path)


def evict_checked(path, tolerance=0.01):
    """Evict and raise :class:`Invalid` if more than ``tolerance`` of the file stays cached."""
    frac = evict(path)
    if frac > tolerance:
        # One retry: pages under write-back a moment ago may be droppable now.
        time.sleep(0.05)
        frac = evict(path)
    if frac > tolerance:
        raise Invalid(f"eviction failed: {frac:.0%} of {os.path.basename(path)} still resident "
                      f"after fsync + POSIX_FADV_DONTNEED; cold figure not reported")
    return frac


def read_whole(path, chunk=1 << 20, random_advice=False):
    """Read the file through read() (``pread`` into one reused buffer). With
    ``random_advice`` the fd gets POSIX_FADV_RANDOM first: readahead is off and the page cache
    fills with 4 KiB pages instead of large folios."""
    buf = bytearray(chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        if random_advice:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        off = 0
        while True:
            n = os.preadv(fd, [buf], off)
            if n <= 0:
                break
            off += n
    finally:
        os.close(fd)
    return off


def mappings_of(path):
    """How many mappings of the file ``path`` this process has (/proc/self/maps; 0 where
    the kernel does not say)."""
    target = os.path.realpath(path)
    n = 0
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.rstrip("\n").split(None, 5)
                if len(parts) == 6 and parts[5] == target:
                    n += 1
    except OSError:
        return 0
    return n


def anon_huge_fraction(array):
    """The fraction of a contiguous ``array``'s bytes held in anonymous huge pages, or None
    where the kernel does not say (and for an empty or non-contiguous array). Counted per
    mapping (AnonHugePages of each mapping the array's bytes lie in, /proc/self/smaps; see
    proc(5)), so meant for an array that has its mappings to itself: a large one (numpy puts
    arrays of 4 MiB and more in 2 MiB pages when transparent huge pages are allowed, with
    madvise(MADV_HUGEPAGE))."""
    if array.nbytes == 0 or not (array.flags.c_contiguous or array.flags.f_contiguous):
        return None
    start = array.__array_interface__["data"][0]
    end = start + array.nbytes
    huge = 0
    inside = False
    found = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo < end and hi > start
                elif inside and head == "AnonHugePages:":
                    huge += int(line.split()[1]) * 1024
                    found = True
    except (OSError, ValueError):
        return None
    return min(1.0, huge / array.nbytes) if found else None


def smaps_file_pmd_kb():
    """FilePmdMapped of this process in kB (file pages mapped 2 MiB at a time), or None."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("FilePmdMapped:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def pmd_probe(path, nbytes=None):
    """Map the file, touch every page of it (or of its first ``nbytes``) and return how many
    kB got PMD-mapped (FilePmdMapped of this process, after minus before).

    Large folios in the page cache (after a sequential read) map 2 MiB per fault and show up
    as FilePmdMapped; a file cached in 4 KiB pages shows 0. None if the kernel doesn't say.
    :func:`pmd_fraction` turns the figure into the fraction of the file."""
    import numpy as np

    before = smaps_file_pmd_kb()
    if before is None:
        return None
    size = os.path.getsize(path)
    if nbytes is not None:
        size = min(size, nbytes)
    if size == 0:
        return 0
    fd = os.open(path, os.O_RDONLY)
    try:
        mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    try:
        view = np.frombuffer(mm, np.uint8)
        int(view[::PAGE].sum())  # one byte per page: fault everything in
        after = smaps_file_pmd_kb()
        del view
    finally:
        mm.close()
    return max(0, (after or 0) - before)


def pmd_fraction(pmd_kb, size):
    """The fraction of a ``size``-byte file that :func:`pmd_probe` found PMD-mapped."""
    if pmd_kb is None or not size:
        return None
    return min(1.0, pmd_kb * 1024 / size)


#: set_cache_state("large") needs at least this fraction of the file PMD-mapped. Not 100%:
#: a sequential read ramps its readahead (and folio) size up, so the first ~30 MiB of the
#: file sits in folios smaller than 2 MiB (measured on ext4, kernel 6.18: 53% of a 64 MiB
#: file PMD-mapped, 88% of 256 MiB); the measured fraction goes in every result's
#: cache_state.
LARGE_MIN_PMD = 0.5


def set_cache_state(path, state):
    """Put the whole file in the page cache in ``state``: "4k" (evict, then read with
    POSIX_FADV_RANDOM: 4 KiB pages) or "large" (evict, then a plain sequential read: large
    folios). Returns a dict describing what was verified: ``resident`` (fraction of the
    file's pages cached), ``pmd_mapped_kb`` and ``pmd_fraction`` (how much of the *whole*
    file a mapping touching every page got PMD-mapped); verified if resident >= 99% and the
    PMD fraction is 0 ("4k") or >= :data:`LARGE_MIN_PMD` ("large")."""
    evict_checked(path)
    read_whole(path, random_advice=(state == "4k"))
    frac = resident_fraction(path)
    pmd = pmd_probe(path)
    pmd_frac = pmd_fraction(pmd, os.path.getsize(path))
    info = {"state": state, "resident": frac, "pmd_mapped_kb": pmd, "pmd_fraction": pmd_frac}
    ok = frac >= 0.99
    if pmd_frac is not None:
        ok = ok and ((pmd == 0) if state == "4k" else (pmd_frac >= LARGE_MIN_PMD))
    info["verified"] = ok
    return info


def describe_cache_state(info):
    """One line for a result's cache_state: what :func:`set_cache_state` verified."""
    state = ("large folios (evicted, then read sequentially)" if info["state"] == "large"
             else "4 KiB pages (evicted, then read with POSIX_FADV_RANDOM)")
    pmd = info.get("pmd_fraction")
    pmd_text = ("PMD-mapped: not reported by this kernel" if pmd is None else
                f"{pmd:.1%} of the file PMD-mapped when every page is touched "
                f"({info['pmd_mapped_kb']:,} kB)")
    text = f"cached in {state}; verified: resident {info['resident']:.0%}, {pmd_text}"
    if not info["verified"]:
        text += " -- state NOT verified"
    return text


# -- files ---------------------------------------------------------------------------------

def write_file(path, buffer, chunk=8 << 20):
    """Write ``buffer`` (anything exposing the buffer protocol) to ``path`` and fsync it."""
    mv = memoryview(buffer).cast("B")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < len(mv):
            off += os.write(fd, mv[off:off + chunk])
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the C floor -----------------------------------------------------------------------------

class Floor:
    """The compiled C floor library (mmarray/bench/floor.c), loaded with ctypes.

    Each function runs its whole loop in C and returns the elapsed nanoseconds (or -errno), so
    the one ctypes call per batch costs nothing next to thousands of iterations.
    """

    def __init__(self, lib, compiler):
        self.lib = lib
        self.compiler = compiler
        for name in ("floor_open_map", "floor_open_reads_map", "floor_open_reads_map_many"):
            getattr(lib, name).restype = ctypes.c_int64
        lib.floor_open_map.argtypes = [ctypes.c_char_p, ctypes.c_int64]
        lib.floor_open_reads_map.argtypes = [ctypes.c_char_p] + [ctypes.c_int64] * 7
        lib.floor_open_reads_map_many.argtypes = [ctypes.POINTER(ctypes.c_char_p)] + \
            [ctypes.c_int64] * 4

    @staticmethod
    def _check(ns):
        if ns < 0:
            raise OSError(-ns, os.strerror(-ns))
        return ns

    def open_map(self, path, number):
        """Seconds per open+fstat+mmap+close+munmap of the whole file."""
        return self._check(self.lib.floor_open_map(os.fsencode(path), number)) / 1e9 / number

    def open_reads_map(self, path, number, reads, data_off, data_len):
        """Seconds per open + one or two preads (``reads``: [(offset, length), ...]) + fstat +
        mmap(data) + close + munmap."""
        (at1, len1), (at2, len2) = (list(reads) + [(0, 0)])[:2]
        ns = self.lib.floor_open_reads_map(os.fsencode(path), number, at1, len1, at2, len2,
                                           data_off, data_len)
        return self._check(ns) / 1e9 / number

    def path_array(self, paths):
        """The paths as the C array :meth:`open_reads_map_many` takes (keep it alive)."""
        return (ctypes.c_char_p * len(paths))(*[os.fsencode(p) for p in paths])

    def open_reads_map_many(self, paths, number, header_len, data_off):
        """Seconds per file of ``number`` passes over ``paths`` (from :meth:`path_array`),
        each file: open + pread its first ``header_len`` bytes + fstat + mmap [data_off,
        end of file) + close + munmap."""
        ns = self.lib.floor_open_reads_map_many(paths, len(paths), number, header_len,
                                                data_off)
        return self._check(ns) / 1e9 / number / len(paths)


def _compile(what, source, workdir, out_name, flags):
    """Compile the C file ``source`` (a copy in ``workdir``) into ``workdir/out_name`` with
    the C compiler ($CC, cc, gcc or clang) and ``flags``. Returns (path, compiler name, None),
    or (None, None, reason) when there is no compiler or the build fails."""
    if os.name != "posix":
        return None, None, f"the {what} is POSIX-only"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        return None, None, f"no C compiler (cc/gcc/clang) found: {what} not measured"
    if not os.path.exists(source):
        return None, None, f"{what} source {source} not found"
    src = os.path.join(workdir, os.path.basename(source))
    shutil.copyfile(source, src)
    out = os.path.join(workdir, out_name)
    try:
        proc = subprocess.run([cc, "-O2", "-shared", "-fPIC", *flags, "-o", out, src],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, None, f"compiling the {what} failed: {exc}"
    if proc.returncode != 0:
        return None, None, f"compiling the {what} failed: {proc.stderr.strip()[:300]}"
    return out, os.path.basename(cc), None


def build_floor(source, workdir):
    """Compile the C floor into ``workdir`` and load it. Returns (Floor, None) or
    (None, reason) if no compiler is found or the build fails."""
    lib_path, compiler, why = _compile("C floor", source, workdir, "floor.so", [])
    if lib_path is None:
        return None, why
    try:
        return Floor(ctypes.CDLL(lib_path), compiler), None
    except OSError as exc:
        return None, f"loading the C floor failed: {exc}"


def build_pyfloor(source, workdir):
    """Compile the Python floor (mmarray/bench/pyfloor.c, a C extension module) into
    ``workdir`` against the running Python's and numpy's headers, and import it. Returns
    (module, None) or (None, reason) if there is no compiler, no headers, or the build fails."""
    import importlib.util
    import sysconfig

    import numpy as np

    include = sysconfig.get_paths().get("include")
    if not include or not os.path.exists(os.path.join(include, "Python.h")):
        return None, "no Python.h (the Python development headers): Python floor not measured"
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    lib_path, _, why = _compile("Python floor", source, workdir, "pyfloor" + suffix,
                                [f"-I{include}", f"-I{np.get_include()}"])
    if lib_path is None:
        return None, why
    try:
        spec = importlib.util.spec_from_file_location("pyfloor", lib_path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except (ImportError, OSError) as exc:
        return None, f"loading the Python floor failed: {exc}"
    return module, None


def cpu_model():
    """The CPU's model name (/proc/cpuinfo; platform.processor() elsewhere), or None."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "Model", "cpu model"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def loadavg():
    """The 1, 5 and 15 minute load averages (os.getloadavg), or None."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover
        return None


def free_page_reporting(root="/sys/bus/virtio/devices"):
    """True if a virtio-balloon device reports free pages to its host (feature bit 5,
    VIRTIO_BALLOON_F_REPORTING, in /sys/bus/virtio/devices/*/features), False if there is a
    balloon without it, None where it cannot be told (no virtio, not Linux). Memory the guest
    freed is then handed back and the host backs it again on the next touch: allocating
    memory (page-cache pages included) is slow or fast depending on which pages it gets."""
    try:
        devices = os.listdir(root)
    except OSError:
        return None
    found = None
    for name in devices:
        try:
            with open(os.path.join(root, name, "device")) as f:
                if int(f.read().strip(), 16) != 5:  # virtio device id 5: the balloon
                    continue
            with open(os.path.join(root, name, "features")) as f:
                bits = f.read().strip()
        except (OSError, ValueError):
            continue
        found = bool(found) or (len(bits) > 5 and bits[5] == "1")
    return found


def machine_info():
    """What the run ran on: Python, NumPy, kernel (uname), CPU model and count, memory, the
    mapping limits, and the load average now (the CLI takes it before and after the run)."""
    info = {"python": sys.version.split()[0], "platform": sys.platform,
            "cpus": os.cpu_count(), "page_size": PAGE}
    try:
        import numpy as np

        info["numpy"] = np.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        u = os.uname()
        info["kernel"] = u.release
        info["uname"] = f"{u.sysname} {u.release} {u.version} {u.machine}"
    except AttributeError:  # pragma: no cover
        pass
    info["cpu_model"] = cpu_model()
    info["loadavg"] = loadavg()
    info["free_page_reporting"] = free_page_reporting()
    for key, path in (("max_map_count", "/proc/sys/vm/max_map_count"),
                      ("thp", "/sys/kernel/mm/transparent_hugepage/enabled")):
        try:
            with open(path) as f:
                info[key] = f.read().strip()
        except OSError:
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    info["mem_total_kb"] = int(line.split()[1])
    except OSError:
        pass
    return info
