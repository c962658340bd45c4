"""``python -m mmarray bench``: run the benchmark cases installed with the package
(``mmarray.bench``), from any directory.

``--bench-dir DIR`` runs the cases of another directory laid out like ``mmarray/bench``
(``__init__.py``, ``cases.py``, ``_timing.py``, ``floor.c``) instead, for example a newer set of
cases against an older installed mmarray; it is imported under a private package name.
"""
from __future__ import annotations

import argparse
import fnmatch
import importlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback

_PKG = "_mmarray_benchmarks"
_MARKERS = ("__init__.py", "cases.py", "_timing.py", "floor.c")
SCHEMA = "mmarray-bench/2"  # 2: CPU, peak RSS, spreads, the "baseline" role


class SetupError(Exception):
    """A problem the user can fix (printed without a traceback, exit status 2)."""


# -- the cases: installed, or from --bench-dir -----------------------------------------------------

def _is_bench_dir(path):
    return all(os.path.isfile(os.path.join(path, m)) for m in _MARKERS)


def load_benchmarks(bench_dir=None):
    """Return ``(cases, _timing, directory)``: the installed ``mmarray.bench`` modules, or
    ``bench_dir`` imported as the private package ``_mmarray_benchmarks``."""
    if bench_dir is None:
        from mmarray.bench import _timing, cases

        return cases, _timing, os.path.dirname(os.path.abspath(cases.__file__))
    path = os.path.abspath(bench_dir)
    if not _is_bench_dir(path):
        raise SetupError(f"--bench-dir {bench_dir!r} is not a benchmarks directory "
                         f"(expected {', '.join(_MARKERS)} in it)")
    mod = sys.modules.get(_PKG)
    if mod is None or os.path.abspath(os.path.dirname(mod.__file__)) != path:
        for name in [n for n in sys.modules if n == _PKG or n.startswith(_PKG + ".")]:
            del sys.modules[name]
        spec = importlib.util.spec_from_file_location(
            _PKG, os.path.join(path, "__init__.py"), submodule_search_locations=[path])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[_PKG] = mod
        spec.loader.exec_module(mod)
    return (importlib.import_module(_PKG + ".cases"), importlib.import_module(_PKG + "._timing"),
            path)


# -- progress --------------------------------------------------------------------------------------

class Progress:
    """Progress lines on stderr: rewritten in place on a terminal, throttled otherwise."""

    def __init__(self, stream=None, enabled=True):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._dirty = False

    def _stamp(self):
        return f"[{time.perf_counter() - self.t0:6.1f}s]"

    def line(self, msg):
        if not self.enabled:
            return
        if self._dirty:
            self.stream.write("\r\033[K")
            self._dirty = False
        self.stream.write(f"{self._stamp()} {msg}\n")
        self.stream.flush()

    def __call__(self, msg):
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            self.stream.write(f"\r\033[K{self._stamp()}   {msg}"[:200])
            self.stream.flush()
            self._dirty = True
        elif now - self._last >= 2.0:
            self.stream.write(f"{self._stamp()}   {msg}\n")
            self.stream.flush()
            self._last = now

    def close(self):
        if self._dirty:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._dirty = False


# -- formatting ------------------------------------------------------------------------------------

def _num(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _ratio(v):
    return "-" if v is None else f"{v:.2f}×"


def _load(v):
    return "/".join(f"{x:.2f}" for x in v) if v else "?"


def _spread(e, key):
    """A ratio with the middle half of its per-round values: ``1.23× [1.20–1.31]``."""
    v = e.get(key)
    if v is None:
        return "-"
    iqr = e.get(key + "_iqr")
    return f"{v:.2f}× [{iqr[0]:.2f}–{iqr[1]:.2f}]" if iqr else f"{v:.2f}×"


def _format_bytes(n):  # the cases' _timing.format_bytes, for reports read back from JSON
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.0f} {unit}" if n >= 100 * div else f"{n / div:.1f} {unit}"
    return f"{n} B"


def _other(case, t):
    """What a target compares with, by name."""
    return case.get(t["against"]) or t["against"]


def _value(t, v):
    """A value target's figure, with its unit (``at_most`` targets on a contender's info); a
    ratio with three decimals, so that one just past its bound never prints as the bound."""
    unit = t.get("unit") or ""
    if unit == "×" and isinstance(v, (int, float)) and math.isfinite(v):
        return f"{v:.3f} ×"
    return f"{_num(v)} {unit}".rstrip()


def format_table(report):
    """The human-readable table of a report (the dict written by --json)."""
    lines = []
    meta = report.get("meta", {})
    lines.append(f"mmarray bench — {meta.get('mode', '?')} run, big file "
                 f"{meta.get('size_human', '?')}, {meta.get('rounds', '?')} rounds "
                 f"({meta.get('micro_rounds', '?')} for micro cases), temp dir on "
                 f"{meta.get('fs_type') or '?'}")
    seed = meta.get("seed")
    lines.append("ratios are speed ratios, median of per-round ratios (contenders run "
                 "interleaved" + (f", orders drawn from seed {seed}: --seed {seed} repeats them"
                                  if seed is not None else "") +
                 "): >1× = faster than (or, for counts, more than) the NumPy way / the limit")
    mach = meta.get("machine") or {}
    lines.append(f"machine: {mach.get('cpu_model') or '?'} ({mach.get('cpus', '?')} CPUs), "
                 f"kernel {mach.get('kernel') or '?'}, Python {mach.get('python', '?')}, "
                 f"NumPy {mach.get('numpy', '?')}; load average (1/5/15 min) before "
                 f"{_load(meta.get('loadavg_before'))}, after {_load(mach.get('loadavg'))}")
    if mach.get("free_page_reporting"):
        lines.append("note: this machine is a VM whose balloon reports free pages to the host "
                     "(virtio-balloon REPORTING): memory freed and allocated again may cost the "
                     "host's fault and zeroing, so runs that allocate a lot (column_means) are "
                     "bimodal")
    lines.append("CPU: process CPU time per op (all threads; worker processes where a case has "
                 "them) and its ratio to wall time; [a–b]: the middle half of the per-round "
                 "ratios")
    if meta.get("c_floor_note"):
        lines.append(f"note: {meta['c_floor_note']}")
    w = 38
    for case in report["cases"]:
        lines.append("")
        lines.append(f"== {case['name']}: {case['title']}")
        if case.get("cache_state") and case["cache_state"] != "n/a":
            lines.append(f"   cache: {case['cache_state']}")
        if case.get("error"):
            lines.append(f"   CASE ERROR: {case['error']}")
            continue
        unit = case["unit"]
        has_rss = any(e.get("peak_rss") for e in case["contenders"])
        has_base = any(e["role"] == "baseline" for e in case["contenders"])
        lines.append(f"   {'contender':<{w}} {'median':>12} {'min–max':>19} {'CPU':>18} "
                     f"{'vs numpy':>20} {'vs limit':>20}"
                     + (f" {'vs baseline':>20}" if has_base else "")
                     + (f" {'peak RSS':>10}" if has_rss else ""))
        for e in case["contenders"]:
            name = e["name"] + {"limit": " [limit]", "baseline": " [baseline]"}.get(e["role"], "")
            if len(name) > w:
                name = name[:w - 1] + "…"
            if e["median"] is None:
                lines.append(f"   {name:<{w}} {e['status']}: {e['reason'] or ''}")
                continue
            med = f"{_num(e['median'])} {unit}"
            rng = f"{_num(e['min'])}–{_num(e['max'])}"
            cpu = "-"
            if e.get("cpu_median") is not None:
                cpu = f"{_num(e['cpu_median'])} {e['cpu_unit']}"
                if e.get("cpu_per_wall") is not None:
                    cpu += f" ({e['cpu_per_wall']:.2f})"
            row = (f"   {name:<{w}} {med:>12} {rng:>19} {cpu:>18} "
                   f"{_spread(e, 'vs_reference'):>20} {_spread(e, 'vs_limit'):>20}")
            if has_base:
                row += f" {_spread(e, 'vs_baseline'):>20}"
            if has_rss:
                rss = e.get("peak_rss")
                row += f" {_format_bytes(rss) if rss else '-':>10}"
            lines.append(row)
            if e["status"] != "ok" and e["reason"]:
                lines.append(f"   {'':<{w}} ({e['status']}: {e['reason']})")
        for t in case.get("targets", []):
            status = t["status"].upper()
            if t["measured"] is None:
                lines.append(f"   target {t['text']}: {status} ({t['reason']})")
            else:
                if t.get("at_most"):
                    shown, need = _value(t, t["measured"]), f"≤ {_value(t, t['required'])}"
                elif t["against"] == "value":
                    shown, need = _num(t["measured"]), f"≥ {_num(t['required'])}"
                elif t.get("as_time"):
                    shown = f"takes {1 / t['measured']:.3f}× the time of {_other(case, t)}"
                    need = f"≤ {1 / t['required']:.3f}×"
                else:
                    shown = f"{t['measured']:.3f}× the speed of {_other(case, t)}"
                    need = f"≥ {t['required']:.3f}×"
                lines.append(f"   target {t['text']}: {status} — {t['contender']} {shown} "
                             f"(needs {need})")
        for note in case.get("notes", []):
            lines.append(f"   note: {note}")
    lines.append("")
    lines.append("targets (measured side by side in this run):")
    for case in report["cases"]:
        for t in case.get("targets", []):
            if t["measured"] is None:
                got = t.get("reason") or ""
            elif t.get("at_most"):
                got = f"{t['contender']}: {_value(t, t['measured'])}"
            elif t["against"] == "value":
                got = f"{t['contender']}: {_num(t['measured'])}"
            elif t.get("as_time"):
                got = f"{t['contender']}: {1 / t['measured']:.3f}× the time of {_other(case, t)}"
            else:
                got = f"{t['contender']}: {t['measured']:.3f}× the speed of {_other(case, t)}"
            lines.append(f"   {t['status'].upper():<5} {case['name']}: {t['text']} — {got}")
    s = report.get("summary", {})
    tg = s.get("targets", {})
    lines.append("")
    lines.append(f"targets: {tg.get('pass', 0)} pass, {tg.get('fail', 0)} fail, "
                 f"{tg.get('n/a', 0)} n/a; {s.get('errors', 0)} contender error(s); "
                 f"{report.get('meta', {}).get('seconds', 0):.0f} s")
    return "\n".join(lines)


def _md_target(case, t):
    status = t["status"] if t["status"] != "fail" else "**fail**"
    if t["measured"] is None:
        return f"{t['text']}: {status} ({t.get('reason') or ''})"
    if t.get("at_most"):
        got = _value(t, t["measured"])
    elif t["against"] == "value":
        got = _num(t["measured"])
    elif t.get("as_time"):
        got = f"{1 / t['measured']:.3f}× the time"
    else:
        got = f"{t['measured']:.3f}×"
    return f"{t['text']}: {status} ({got})"


def format_markdown(report):
    """Markdown tables of a report: one row per contender, grouped by case, with CPU time,
    the ratios and their spread, peak RSS where measured, and each case's targets."""
    meta = report.get("meta", {})
    mach = meta.get("machine") or {}
    vm = ", a VM whose balloon reports free pages to its host" \
        if mach.get("free_page_reporting") else ""
    seed_text = "" if meta.get("seed") is None else f"; contenders' order seed {meta['seed']}"
    out = [f"{meta.get('mode', '?')} run, {meta.get('started', '')[:10]}: big file "
           f"{meta.get('size_human', '?')}, {meta.get('rounds', '?')} rounds "
           f"({meta.get('micro_rounds', '?')} for micro cases), {meta.get('seconds', 0):.0f} s; "
           f"{mach.get('cpu_model') or '?'} ({mach.get('cpus', '?')} CPUs), kernel "
           f"{mach.get('kernel') or '?'}, Python {mach.get('python', '?')}, NumPy "
           f"{mach.get('numpy', '?')}, temp dir on {meta.get('fs_type') or '?'}"
           f"{vm}{seed_text}"
           f"; load average before {_load(meta.get('loadavg_before'))}, after "
           f"{_load(mach.get('loadavg'))}.",
           "",
           "| case | contender | median | CPU (CPU/wall) | vs numpy [middle half] | "
           "vs limit [middle half] | peak RSS |",
           "|---|---|---|---|---|---|---|"]
    for case in report["cases"]:
        if case.get("error"):
            out.append(f"| {case['name']} | case error: {case['error']} | | | | | |")
            continue
        first = True
        for e in case["contenders"]:
            label = case["name"] if first else ""
            first = False
            name = e["name"] + {"limit": " (limit)", "baseline": " (baseline)",
                                "reference": " (reference)"}.get(e["role"], "")
            if e["median"] is None:
                out.append(f"| {label} | {name} | {e['status']}: {e['reason'] or ''} | | | | |")
                continue
            cpu = "-"
            if e.get("cpu_median") is not None:
                cpu = f"{_num(e['cpu_median'])} {e['cpu_unit']}"
                if e.get("cpu_per_wall") is not None:
                    cpu += f" ({e['cpu_per_wall']:.2f})"
            vs_limit = _spread(e, "vs_limit")
            if vs_limit == "-" and e.get("vs_baseline") is not None:
                vs_limit = "baseline " + _spread(e, "vs_baseline")
            rss = _format_bytes(e["peak_rss"]) if e.get("peak_rss") else "-"
            out.append(f"| {label} | {name} | {_num(e['median'])} {case['unit']} | {cpu} | "
                       f"{_spread(e, 'vs_reference')} | {vs_limit} | {rss} |")
        targets = "; ".join(_md_target(case, t) for t in case.get("targets", []))
        if targets:
            out.append(f"| | *targets* | {targets} | | | | |")
    tg = report.get("summary", {}).get("targets", {})
    out += ["", f"Targets: {tg.get('pass', 0)} pass, {tg.get('fail', 0)} fail, "
                f"{tg.get('n/a', 0)} n/a."]
    return "\n".join(out)


def summarize(cases):
    counts = {"pass": 0, "fail": 0, "n/a": 0}
    errors = 0
    for case in cases:
        for t in case.get("targets", []):
            counts[t["status"]] = counts.get(t["status"], 0) + 1
        for e in case.get("contenders", []):
            errors += e["status"] == "error"
        errors += bool(case.get("error"))
    return {"targets": counts, "errors": errors}


# -- plotting --------------------------------------------------------------------------------------

_PLOT_HELP = ("--plot needs matplotlib, which is not installed: "
              "pip install matplotlib (or pip install 'mmarray[plot]')")


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SetupError(_PLOT_HELP) from None


_COLORS = {"mmarray": "#1f77b4", "other": "#ff7f0e", "limit": "#444444", "baseline": "#888888"}


def _plot_rows(report, key, counts):
    """(label, role, ratio, low, high) per contender with a ``key`` ratio, reference rows
    (always 1) left out; "vs_limit" takes the baseline where a case has no limit.
    ``counts``: only the count cases (live mappings), else only speeds."""
    rows = []
    for case in report["cases"]:
        if (case.get("kind") == "count") != counts:
            continue
        for e in case.get("contenders", []):
            k = key
            if key == "vs_limit" and not e.get(k):  # a case with a baseline instead of a limit
                k = "vs_baseline"
            v = e.get(k)
            if not v or e["role"] == "reference" or (k != "vs_reference" and
                                                     e["role"] in ("limit", "baseline")):
                continue
            lo, hi = e.get(k + "_iqr") or (v, v)
            rows.append((f"{case['name']} · {e['name']}", e["role"], v, lo, hi))
    return rows


def _panel(ax, rows, xlabel):
    ys = list(range(len(rows)))[::-1]
    vals = [r[2] for r in rows]
    err = [[max(0.0, r[2] - r[3]) for r in rows], [max(0.0, r[4] - r[2]) for r in rows]]
    ax.barh(ys, vals, xerr=err, color=[_COLORS.get(r[1], "#999999") for r in rows],
            height=0.75, error_kw={"elinewidth": 0.7, "capsize": 1.5})
    for y, v in zip(ys, vals):
        ax.text(v, y, f" {v:.2f}×", va="center", fontsize=6)
    ax.set_yticks(ys)
    ax.set_yticklabels([r[0] for r in rows], fontsize=6)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=7)


def plot(report, path):
    """Bar charts (log scale): each contender's speed relative to the NumPy way, and relative
    to the case's limit (what the targets use), with the middle half of the per-round ratios
    as error bars; counts (live mappings) in their own panel; reference bars (always 1)
    left out."""
    _need_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(_plot_rows(report, "vs_reference", False),
               "speed relative to the NumPy way (numpy.memmap / np.load); >1 = faster"),
              (_plot_rows(report, "vs_limit", False),
               "speed relative to the case's limit (C floor, in-memory) or baseline (plain I/O); "
               "1 = the same"),
              (_plot_rows(report, "vs_reference", True),
               "live mappings relative to numpy.memmap (a count, not a speed); >1 = more")]
    panels = [(rows, label) for rows, label in panels if rows]
    if not panels:
        raise SetupError("nothing to plot: no case produced ratios")
    heights = [0.22 * len(rows) + 0.9 for rows, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.8),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, (rows, label) in zip(axes[:, 0], panels):
        _panel(ax, rows, label)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in _COLORS.values()]
    axes[0, 0].legend(handles, list(_COLORS), loc="lower right", fontsize=6)
    meta = report.get("meta", {})
    axes[0, 0].set_title(f"mmarray bench ({meta.get('mode', '')}, {meta.get('size_human', '')});"
                         f" error bars: middle half of the per-round ratios", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------

def build_parser():
    from mmarray.bench._timing import format_bytes
    from mmarray.bench.cases import MODES

    def length_help(mode):
        m = MODES[mode]
        return (f"{format_bytes(m['size'])} big file, {m['rounds']} rounds ({m['micro_rounds']} "
                f"for micro cases): about {m['about']} on a 2-core machine")

    p = argparse.ArgumentParser(
        prog="python -m mmarray bench",
        description="Benchmark mmarray against numpy.memmap, np.load, stdlib mmap and each "
                    "case's limit, on files generated in a temporary directory. Progress goes "
                    "to stderr, the table to stdout. The default run: "
                    f"{length_help('default')}.")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_const", dest="mode", const="quick",
                        help=length_help("quick"))
    length.add_argument("--full", action="store_const", dest="mode", const="full",
                        help=length_help("full"))
    p.set_defaults(mode="default")
    p.add_argument("--size", help="size of the big file (default: see --quick and --full); "
                                  "binary units: 512M, 2G")
    p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart (needs matplotlib)")
    p.add_argument("--cases", metavar="PATTERNS",
                   help="comma-separated case names or glob patterns (see --list)")
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument("--rounds", type=int, help="rounds for the big-file cases (default: see "
                                              "--quick and --full)")
    p.add_argument("--micro-rounds", type=int, help="rounds for the micro cases (default: see "
                                                    "--quick and --full)")
    p.add_argument("--dir", help="parent of the temporary directory (default: the system's "
                                 "temp dir); must be on a disk, not tmpfs, for the cold cases")
    p.add_argument("--bench-dir", help="run the cases of this directory (laid out like "
                                       "mmarray/bench) instead of the installed ones")
    p.add_argument("--from-json", metavar="FILE",
                   help="do not run: print the table (and --plot) of a saved --json file")
    p.add_argument("--markdown", action="store_true",
                   help="print Markdown tables (as in README's Benchmarks section) instead of "
                        "the text table")
    p.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    p.add_argument("--seed", type=int, help="seed of the contenders' order in each round "
                   "(default: drawn anew for each run, and printed)")
    return p


def _select(cases, patterns, result_names=None):
    if not patterns:
        return list(cases)
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    result_names = result_names or {}
    chosen = [c for c in cases
              if any(fnmatch.fnmatchcase(n, p) for n in [c[0], *result_names.get(c[0], ())]
                     for p in pats)]
    if not chosen:
        raise SetupError(f"--cases {patterns!r} matches no case; cases: "
                         f"{', '.join(c[0] for c in cases)}")
    return chosen


def _clean_json(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_json(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean_json(obj.item())
    return obj


def _check_resources(workdir, size, share_size=0):
    need = 2 * size + share_size + (64 << 20)
    free = shutil.disk_usage(workdir).free
    if free < need:
        raise SetupError(f"{workdir} has {free >> 20} MiB free; the run needs about "
                         f"{need >> 20} MiB: use a smaller --size or another --dir")
    try:  # the big file is held in memory (the in-memory limit) and in the page cache
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) << 10 for line in f
                         if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return
    if 2 * size + (256 << 20) > avail:
        raise SetupError(f"--size {size >> 20} MiB is too big for this machine's memory "
                         f"({avail >> 20} MiB available; the run holds the data in memory and "
                         f"in the page cache): use a --size below {avail // 2 >> 20} MiB")


def run(args, progress):
    from mmarray import __version__

    cases_mod, T, bench_dir = load_benchmarks(args.bench_dir)
    if args.list:
        names = getattr(cases_mod, "RESULT_NAMES", {})
        width = max((len(name) for name, _, _ in cases_mod.CASES), default=0)
        for name, _, desc in cases_mod.CASES:
            also = f" (reports {', '.join(names[name])})" if name in names else ""
            print(f"{name:<{width}}  {desc}{also}")
        return None
    if args.plot:
        _need_matplotlib()
    selected = _select(cases_mod.CASES, args.cases, getattr(cases_mod, "RESULT_NAMES", None))
    size = None
    if args.size:
        try:
            size = T.parse_size(args.size)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
    parent = args.dir or tempfile.gettempdir()
    if not os.path.isdir(parent):
        raise SetupError(f"--dir {parent!r} is not a directory")
    workdir = tempfile.mkdtemp(prefix="mmarray-bench-", dir=parent)
    t0 = time.perf_counter()
    load_before = T.loadavg()  # the machine info at the end has the load after
    results = []
    try:
        try:
            ctx = cases_mod.Context(workdir, mode=args.mode, size=size, rounds=args.rounds,
                                    micro_rounds=args.micro_rounds, progress=progress)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        if args.seed is not None:
            ctx.seed = args.seed
        _check_resources(workdir, ctx.size, getattr(ctx, "share_size", 0))
        about = getattr(cases_mod, "MODES", {}).get(args.mode, {}).get("about")
        expect = f", about {about}" if about and not args.cases else ""
        progress.line(f"mmarray {__version__} bench ({args.mode} run{expect}): "
                      f"{len(selected)} case(s), big file {T.format_bytes(ctx.size)}, work dir "
                      f"{workdir} ({ctx.fs_type or 'unknown fs'}), cases from {bench_dir}")
        if ctx.fs_type in ("tmpfs", "ramfs"):
            progress.line(f"warning: {workdir} is on {ctx.fs_type}: files cannot be evicted, "
                          f"cold cases will report 'eviction failed'; use --dir on a disk")
        for i, (name, fn, desc) in enumerate(selected, 1):
            progress.line(f"[{i}/{len(selected)}] {name}: {desc}")
            tc = time.perf_counter()
            try:
                out = fn(ctx)
            except (KeyboardInterrupt, SetupError):
                raise
            except Exception as exc:
                tb = traceback.format_exc(limit=3)
                progress.line(f"case {name} failed: {type(exc).__name__}: {exc}")
                out = [{"name": name, "title": desc, "unit": "", "kind": "", "cache_state": "n/a",
                        "params": {}, "notes": [tb.strip().splitlines()[-1]],
                        "error": f"{type(exc).__name__}: {exc}", "reference": None,
                        "limit": None, "contenders": [], "targets": []}]
            for r in out:
                r["seconds"] = time.perf_counter() - tc
            results.extend(out)
        progress.close()
        floor, floor_note = ctx._floor or (None, None)
        meta = {"schema": SCHEMA, "mmarray": __version__, "mode": args.mode,
                "size": ctx.size, "size_human": T.format_bytes(ctx.size), "rounds": ctx.rounds,
                "micro_rounds": ctx.micro_rounds, "fs_type": ctx.fs_type,
                "seed": getattr(ctx, "seed", None),
                "c_floor": floor.compiler if floor else None, "c_floor_note": floor_note,
                "bench_dir": bench_dir, "argv": sys.argv[1:],
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "machine": T.machine_info(), "loadavg_before": load_before,
                "seconds": time.perf_counter() - t0}
        return {"schema": SCHEMA, "meta": meta, "cases": results,
                "summary": summarize(results)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    args = build_parser().parse_args(argv)
    progress = Progress(enabled=not args.no_progress)

    def on_term(signum, frame):
        raise KeyboardInterrupt

    old = None
    try:
        old = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        pass
    try:
        if args.from_json:
            with open(args.from_json) as f:
                report = json.load(f)
            if args.plot:
                _need_matplotlib()
        else:
            report = run(args, progress)
            if report is None:
                return 0
        print(format_markdown(report) if args.markdown else format_table(report))
        if args.json and not args.from_json:
            with open(args.json, "w") as f:
                json.dump(_clean_json(report), f, indent=1)
            progress.line(f"wrote {args.json}")
        if args.plot:
            plot(report, args.plot)
            progress.line(f"wrote {args.plot}")
        return 0
    except SetupError as exc:
        progress.close()
        print(f"mmarray bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.close()
        print("mmarray bench: interrupted; temporary files removed", file=sys.stderr)
        return 130
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
