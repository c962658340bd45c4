"""The benchmark harness: `python -m mmarray bench` runs from any directory (the cases are
installed with the package), produces numbers for every case and writes well-formed JSON.
Values are not checked (they depend on the machine); only that each case measured something
and that nothing errored. Every run's working directory is a temporary one outside the
checkout, as after `pip install .`."""
import importlib.util
import itertools
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

import mmarray
from mmarray.bench import _timing as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASV_SUITE = os.path.join(REPO, "benchmarks", "benchmarks.py")
INSTALLED_CASES = os.path.dirname(os.path.abspath(T.__file__))

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the benchmark harness measures Linux page-cache behaviour")


def _env(**extra):
    # The subprocess must import the same mmarray as this test process (an installed copy or
    # the source tree), whatever the current directory does to sys.path.
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def _needs_missing_extra(case):
    """Every contender of the case was skipped because an optional package is missing."""
    return bool(case["contenders"]) and all(
        e["status"] == "skipped" and "not installed" in (e["reason"] or "")
        for e in case["contenders"])


def _bench(*args, cwd, env=None, timeout=300):
    assert not os.path.exists(os.path.join(cwd, "benchmarks"))
    return subprocess.run([sys.executable, "-m", "mmarray", "bench", *args], cwd=cwd,
                          env=env or _env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("elsewhere")
    out = cwd / "quick.json"
    proc = _bench("--quick", "--json", str(out), cwd=str(cwd))
    assert proc.returncode == 0, f"bench --quick failed:\n{proc.stdout}\n{proc.stderr}"
    with open(out) as f:
        return proc, json.load(f)


@pytest.mark.slow
def test_quick_run_structure(quick_run):
    proc, report = quick_run
    assert report["schema"] == "mmarray-bench/2"
    meta = report["meta"]
    for key in ("mode", "size", "rounds", "micro_rounds", "machine", "seconds", "fs_type"):
        assert key in meta
    assert meta["mode"] == "quick"
    assert meta["bench_dir"] == INSTALLED_CASES  # the cases installed with the package
    assert set(report["summary"]["targets"]) >= {"pass", "fail", "n/a"}
    for case in report["cases"]:
        for key in ("name", "title", "unit", "cache_state", "contenders", "targets", "notes",
                    "reference", "limit"):
            assert key in case, (case.get("name"), key)
        assert not case.get("error"), f"case {case['name']} failed: {case['error']}"
        for e in case["contenders"]:
            for key in ("name", "role", "status", "reason", "median", "min", "max",
                        "vs_reference", "vs_limit", "samples_s", "info"):
                assert key in e, (case["name"], e.get("name"), key)
            assert e["role"] in ("reference", "limit", "baseline", "mmarray", "other")
            assert e["status"] in ("ok", "skipped", "invalid", "error")
        for t in case["targets"]:
            assert t["status"] in ("pass", "fail", "n/a")
            assert t["text"] and "required" in t and "measured" in t


@pytest.mark.slow
def test_every_case_produced_numbers(quick_run):
    proc, report = quick_run
    names = {c["name"] for c in report["cases"]}
    expected = {"open_close_4k", "npy_open_many_files", "npy_open_many_shapes",
                "npy_open_same_file",
                "npz_member_open", "op_index_scalar", "op_slice_10", "op_slice_sum",
                "op_ufunc_add", "sum_cached_4k",
                "sum_cached_large", "cold_seq_scan", "cold_random_4k", "live_mappings",
                "write_durable", "share_pool", "share_joblib", "dask_mean", "append",
                "resize"}
    assert expected <= names, expected - names
    no_evict = report["meta"]["fs_type"] in ("tmpfs", "ramfs")
    for case in report["cases"]:
        if no_evict and case["name"].startswith("cold_"):
            continue  # files on tmpfs cannot be evicted: cold figures are refused, as they must
        if _needs_missing_extra(case):
            continue  # joblib or dask is not installed here: skipped, and says so
        measured = [e for e in case["contenders"] if e["median"] is not None]
        assert measured, f"case {case['name']} measured nothing"
        ref = [e for e in case["contenders"] if e["role"] == "reference"]
        assert ref and ref[0]["median"] is not None, f"{case['name']}: no NumPy figure"
        assert ref[0]["median"] > 0
        mm = [e for e in case["contenders"] if e["role"] == "mmarray"]
        assert mm, f"{case['name']}: no mmarray contender"
        for e in case["contenders"]:
            # skipped (a missing API, "not available") is fine; an error is a bug
            assert e["status"] != "error", f"{case['name']} / {e['name']}: {e['reason']}"
            if e["status"] == "skipped":
                assert e["reason"], (case["name"], e["name"])
            if e["median"] is not None:
                assert e["min"] <= e["median"] <= e["max"], (case["name"], e["name"])
        # the plain mmarray contender runs everywhere (it needs only mmarray.open)
        plain = [e for e in mm if e["name"] == "mmarray"]
        if plain:
            assert plain[0]["median"] is not None, (case["name"], plain[0]["reason"])


@pytest.mark.slow
def test_quick_run_output(quick_run):
    proc, report = quick_run
    for case in report["cases"]:
        assert f"== {case['name']}" in proc.stdout
    assert "targets:" in proc.stdout
    assert "round" in proc.stderr or "[1/" in proc.stderr  # progress went to stderr


@pytest.mark.slow
def test_from_json_reprints_the_table(quick_run, tmp_path):
    proc, report = quick_run
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    again = _bench("--from-json", str(path), "--no-progress", cwd=str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert "== open_close_4k" in again.stdout
    md = _bench("--from-json", str(path), "--markdown", "--no-progress", cwd=str(tmp_path))
    assert md.returncode == 0, md.stderr
    rows = [line for line in md.stdout.splitlines() if line.startswith("| open_close_4k |")]
    assert len(rows) == 1 and "(reference)" in rows[0]
    n_open = len(next(c for c in report["cases"] if c["name"] == "open_close_4k")["contenders"])
    lines = md.stdout.splitlines()
    start = lines.index(rows[0])
    assert all(line.startswith("|  | ") for line in lines[start + 1:start + n_open])
    assert "*targets*" in md.stdout and "Targets:" in md.stdout


def test_list_and_case_selection(tmp_path):
    proc = _bench("--list", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "open_close_4k" in proc.stdout and "write_durable" in proc.stdout
    listed = {line.split()[0]: line for line in proc.stdout.splitlines()}
    assert "share_pool, share_joblib" in listed["share"]
    assert "dask_mean" in listed["dask"]
    assert "resize, append" in listed["append"]
    # the descriptions start in one column, past the longest name (column_means_cached)
    starts = {line.index(line.split(None, 1)[1]) for line in listed.values()}
    assert len(starts) == 1 and starts.pop() > len("column_means_cached"), listed
    proc = _bench("--cases", "no_such_case*", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "matches no case" in proc.stderr


def test_bench_dir_runs_another_copy_of_the_cases(tmp_path):
    copy = tmp_path / "cases"
    shutil.copytree(INSTALLED_CASES, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "cases.py", "a") as f:
        f.write("\nCASES = CASES[:1]\n")
    proc = _bench("--list", "--bench-dir", str(copy), cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "open_close_4k" and "write_durable" not in proc.stdout


def test_bench_dir_that_is_not_one_is_a_clear_error(tmp_path):
    proc = _bench("--list", "--bench-dir", str(tmp_path), cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "not a benchmarks directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_size_is_a_clear_error(tmp_path):
    proc = _bench("--size", "lots", "--cases", "open_close_4k", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "cannot parse size" in proc.stderr


def test_quick_and_full_exclude_each_other(tmp_path):
    proc = _bench("--quick", "--full", "--list", cwd=str(tmp_path))
    assert proc.returncode == 2
    assert "not allowed with" in proc.stderr


def test_default_run_without_a_c_compiler_skips_the_floor_with_a_note(tmp_path):
    # No cc/gcc/clang on PATH and no $CC: the C floor contender is skipped, the run goes on.
    env = _env(PATH=str(tmp_path))
    env.pop("CC", None)
    out = tmp_path / "r.json"
    proc = _bench("--cases", "open_close_4k", "--json", str(out), "--no-progress",
                  cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["meta"]["mode"] == "default"
    assert (report["meta"]["rounds"], report["meta"]["micro_rounds"]) == (5, 51)
    assert "no C compiler" in report["meta"]["c_floor_note"]
    assert "note: no C compiler" in proc.stdout
    floor = [e for e in report["cases"][0]["contenders"] if e["role"] == "limit"]
    assert [e["status"] for e in floor] == ["skipped"]
    assert "no C compiler" in floor[0]["reason"]
    mm = [e for e in report["cases"][0]["contenders"] if e["name"] == "mmarray.memmap"]
    assert mm[0]["median"] is not None and mm[0]["vs_reference"] is not None


def test_plot(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        proc = _bench("--cases", "open_close_4k", "--plot", str(tmp_path / "p.png"),
                      cwd=str(tmp_path))
        assert proc.returncode == 2
        assert "matplotlib" in proc.stderr and "pip install" in proc.stderr
        return
    out = tmp_path / "p.png"
    proc = _bench("--quick", "--cases", "open_close_4k", "--plot", str(out), "--no-progress",
                  cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_plot_rows_compare_a_baseline_case_against_its_baseline():
    from mmarray._bench_cli import _plot_rows

    report = {"cases": [
        {"name": "cold", "contenders": [
            {"name": "numpy.memmap", "role": "reference", "vs_reference": 1.0},
            {"name": "mmarray", "role": "mmarray", "vs_reference": 2.0, "vs_baseline": 0.9,
             "vs_baseline_iqr": [0.8, 1.0]},
            {"name": "pread", "role": "baseline", "vs_reference": 2.2, "vs_baseline": 1.0}]},
        {"name": "open", "contenders": [
            {"name": "mmarray", "role": "mmarray", "vs_reference": 3.0, "vs_limit": 0.5},
            {"name": "C floor", "role": "limit", "vs_reference": 6.0, "vs_limit": 1.0}]},
        {"name": "live", "kind": "count", "contenders": [
            {"name": "mmarray", "role": "mmarray", "vs_reference": 60.0}]}]}
    assert _plot_rows(report, "vs_limit", False) == [
        ("cold · mmarray", "mmarray", 0.9, 0.8, 1.0), ("open · mmarray", "mmarray", 0.5, 0.5, 0.5)]
    speeds = _plot_rows(report, "vs_reference", False)
    assert [r[0] for r in speeds] == ["cold · mmarray", "cold · pread", "open · mmarray",
                                      "open · C floor"]
    assert _plot_rows(report, "vs_reference", True) == [("live · mmarray", "mmarray", 60.0,
                                                         60.0, 60.0)]


def test_timing_helpers():
    assert T.parse_size("1G") == 1 << 30
    assert T.parse_size("64MiB") == 64 << 20
    assert T.parse_size("4096") == 4096
    with pytest.raises(ValueError):
        T.parse_size("big")
    # per-round ratios: medians of ref/other, rounds with a missing sample skipped
    assert T.paired_speed_ratio([2.0, 4.0, 6.0], [1.0, 1.0, None]) == 3.0
    assert T.best_of([1.0, None, 3.0], [2.0, 2.0, None]) == [1.0, 2.0, 3.0]
    order = []
    runners = [(k, (lambda k=k: order.append(k) or 1.0)) for k in "abcd"]
    res = T.interleave(runners, rounds=6, warmup=1)
    rounds = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert len(rounds) == 7 and all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # the order changes between rounds
    assert res["a"]["samples"] == [1.0] * 6  # the warm-up round is not counted

    def bad():
        raise T.Invalid("nope")

    res = T.interleave([("x", bad)], rounds=2)
    assert res["x"]["samples"] == [None, None] and res["x"]["invalid"] == ["nope", "nope"]


def test_eviction_and_residency(tmp_path):
    path = str(tmp_path / "f.bin")
    T.write_file(path, bytes(1 << 20))
    T.read_whole(path)
    assert T.resident_fraction(path) == 1.0
    if T.fs_type(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip("tmpfs cannot evict")
    assert T.evict(path) < 0.05


def test_asv_suite_imports_and_runs_each_benchmark_once():
    if not os.path.exists(ASV_SUITE):
        pytest.skip("benchmarks/ (the asv suite) is not next to these tests")
    spec = importlib.util.spec_from_file_location("mmarray_asv_suite", ASV_SUITE)
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    classes = [c for c in vars(suite).values() if isinstance(c, type) and
               c.__module__ == suite.__name__ and not c.__name__.startswith("_")]
    assert {c.__name__ for c in classes} >= {"OpenClose", "NpyOpenClose", "Ops"}
    ran = 0
    for cls in classes:
        params = cls.params if isinstance(cls.params, tuple) else (cls.params,)
        for combo in itertools.product(*params):
            bench = cls()
            bench.setup(*combo)
            try:
                for name in dir(bench):
                    if name.startswith("time_"):
                        getattr(bench, name)(*combo)
                        ran += 1
            finally:
                bench.teardown(*combo)
    assert ran == 4 + 2 + 4 * 3


# -- the share and dask cases (#10) ---------------------------------------------------------

def _has(module):
    return importlib.util.find_spec(module) is not None


def _by_name(case):
    return {e["name"]: e for e in case["contenders"]}


MM_SHARE = ("Mapping", "ArrayRef", "mmarray.memmap")


@pytest.mark.slow
def test_share_and_dask_cases_run_small(tmp_path):
    out = tmp_path / "r.json"
    proc = _bench("--size", "8M", "--rounds", "1", "--cases", "share,dask", "--json", str(out),
                  "--no-progress", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cases = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    assert set(cases) == {"share_pool", "share_joblib", "dask_mean"}
    per_task = (8 << 20) // 8  # bytes of each task's rows
    backends = ["share_pool"] + (["share_joblib"] if _has("joblib") else [])
    for name in backends:
        case = cases[name]
        assert case["params"]["size"] == 8 << 20 and case["params"]["tasks"] == 8
        assert "large folios" in case["cache_state"]
        es = _by_name(case)
        assert set(es) == {"numpy.memmap", *MM_SHARE, "path, offset, count"}
        for e in es.values():
            # every sample's 8 sums were checked against the exact sums: ok means they matched
            assert e["status"] == "ok" and e["median"] > 0, (name, e["name"], e["reason"])
            info = e["info"]
            assert info["payload_bytes"] >= info["payload_bytes_min"] > 0
            assert len(info["payload_bytes_per_task"]) == 8
            assert info["message_bytes"] > info["payload_bytes"]
            assert len(info["cpu_parent_s"]) == len(info["cpu_children_s"]) == e["n"]
            # the CPU column counts the workers too: each sample's CPU >= its workers'
            assert len(e["cpu_samples_s"]) == len(info["cpu_children_s"])
            assert all(c >= w for c, w in zip(e["cpu_samples_s"], info["cpu_children_s"])), \
                (name, e["name"])
        for n in MM_SHARE:
            assert es[n]["info"]["payload_bytes"] < 1024, (name, n)
        assert es["path, offset, count"]["info"]["payload_bytes"] < 200
        if name == "share_pool":  # plain pickle copies numpy.memmap's rows
            assert es["numpy.memmap"]["info"]["payload_bytes"] > per_task
        else:  # joblib's reducer sends numpy.memmap slices as file + offset
            assert es["numpy.memmap"]["info"]["payload_bytes"] < 1024
        payload = [t for t in case["targets"] if t.get("at_most")]
        assert len(payload) == 3 and all(t["status"] == "pass" for t in payload), payload
        assert any("bytes pickled per task" in n for n in case["notes"])
    if _has("dask") and _has("distributed"):
        es = _by_name(cases["dask_mean"])
        for e in es.values():
            assert e["status"] == "ok" and e["median"] > 0, (e["name"], e["reason"])
            # the CPU column counts the workers too: each sample's CPU >= its workers'
            workers = e["info"]["cpu_children_s"]
            assert len(e["cpu_samples_s"]) == len(workers)
            assert all(c >= w for c, w in zip(e["cpu_samples_s"], workers)), e["name"]
        assert es["from_array(numpy.memmap)"]["info"]["graph_bytes"] > 8 << 20
        for n in ("from_array(Mapping)", "mmarray.to_dask"):
            assert es[n]["info"]["graph_bytes"] < 1 << 20
        graph = [t for t in cases["dask_mean"]["targets"] if t.get("at_most")]
        assert len(graph) == 2 and all(t["status"] == "pass" for t in graph), graph
    assert "≤ 1,024 B" in proc.stdout  # the payload targets are printed as upper bounds


@pytest.mark.slow
def test_share_and_dask_cases_reject_a_wrong_sum(tmp_path):
    from mmarray.bench import cases as C

    ctx = C.Context(str(tmp_path), mode="quick", size=8 << 20, rounds=1)
    path, shape, sums = ctx.share_file()
    assert shape == (2048, 1024) and len(sums) == 8
    sums[3] += 1.0  # the file is right, the expectation is not: every contender must say so
    results = C.case_share(ctx)
    if _has("dask") and _has("distributed"):
        results += C.case_dask(ctx)
    for case in results:
        if _needs_missing_extra(case):
            continue
        for e in case["contenders"]:
            assert e["status"] == "error" and e["median"] is None, (case["name"], e["name"])
            assert "wrong sum" in e["reason"] or "wrong mean" in e["reason"], e["reason"]
            if case["name"] != "dask_mean":
                assert "task 3" in e["reason"], e["reason"]
    # The pool's and the executor's workers and the cluster's processes are gone; only
    # multiprocessing's and loky's resource trackers stay (one per process, by design).
    left = []
    for pid in T.child_pids():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        if "resource_tracker" not in cmd:
            left.append(cmd)
    assert not left, left


@pytest.mark.slow
def test_share_and_dask_cases_skip_without_joblib_and_dask(tmp_path):
    # The CI venv has numpy and mmarray only: the Pool result runs, the others say why not.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ("joblib", "dask", "distributed"):
        (blocked / f"{name}.py").write_text("raise ImportError('not in this venv')\n")
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocked), env["PYTHONPATH"]])
    out = tmp_path / "r.json"
    proc = _bench("--size", "8M", "--rounds", "1", "--cases", "share,dask", "--json", str(out),
                  "--no-progress", cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr
    cases = {c["name"]: c for c in json.loads(out.read_text())["cases"]}
    assert all(e["status"] == "ok" for e in cases["share_pool"]["contenders"])
    for name, package in (("share_joblib", "joblib"), ("dask_mean", "dask")):
        case = cases[name]
        assert not case.get("error") and _needs_missing_extra(case), name
        assert all(package in e["reason"] for e in case["contenders"])
        assert all(t["status"] == "n/a" for t in case["targets"])
    assert "Traceback" not in proc.stderr


def test_at_most_targets_are_upper_bounds():
    from mmarray import _bench_cli
    from mmarray.bench import cases as C

    entry = {"name": "m", "role": "mmarray", "status": "ok", "reason": None, "median": 1.0,
             "info": {"payload_bytes": 300}}
    missing = dict(entry, name="s", status="skipped", reason="not available: x", info={})
    result = {"contenders": [entry, missing]}
    ok = C.evaluate_target(result, C.at_most("small", "m", "payload_bytes", 1024, "B"))
    assert (ok["status"], ok["measured"], ok["required"], ok["at_most"]) == ("pass", 300, 1024,
                                                                             True)
    bad = C.evaluate_target(result, C.at_most("tiny", "m", "payload_bytes", 100, "B"))
    assert bad["status"] == "fail"
    na = C.evaluate_target(result, C.at_most("small", "s", "payload_bytes", 1024, "B"))
    assert na["status"] == "n/a" and "not available: x" in na["reason"]
    report = {"meta": {}, "summary": {}, "cases": [{
        "name": "c", "title": "t", "unit": "ms", "cache_state": "n/a", "contenders": [],
        "notes": [], "targets": [ok, bad]}]}
    table = _bench_cli.format_table(report)
    assert "PASS — m 300 B (needs ≤ 1,024 B)" in table
    assert "FAIL — m 300 B (needs ≤ 100 B)" in table


def test_cpu_time_of_child_processes():
    proc = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                             "while time.process_time() - t < 0.2: pass\n"
                             "time.sleep(5)"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if T.cpu_times([proc.pid]).get(proc.pid, 0) >= 0.2:
                break
            time.sleep(0.05)
        assert proc.pid in T.child_pids()
        before = {proc.pid: 0.0}
        assert T.cpu_delta(before, T.cpu_times([proc.pid])) >= 0.2
        assert T.cpu_times([proc.pid, 2 ** 22 + 12345]).keys() == {proc.pid}  # gone: left out
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_quick_run_reports_cpu_time_spread_and_machine(quick_run):
    proc, report = quick_run
    meta = report["meta"]
    assert meta["machine"]["kernel"] and meta["machine"]["cpu_model"]
    assert len(meta["loadavg_before"]) == 3 and len(meta["machine"]["loadavg"]) == 3
    assert "machine: " in proc.stdout and "load average" in proc.stdout
    by_name = {c["name"]: c for c in report["cases"]}
    for name in ("open_close_4k", "sum_cached_4k", "cold_seq_scan", "npy_open_many_files",
                 "npy_open_many_shapes"):
        for e in by_name[name]["contenders"]:
            if e["status"] != "ok":
                continue
            assert e["cpu_median"] > 0, (name, e["name"])
            assert 0 < e["cpu_per_wall"] < 4, (name, e["name"], e["cpu_per_wall"])
            if e["vs_reference"] is not None:
                lo, hi = e["vs_reference_iqr"]
                assert lo <= e["vs_reference"] <= hi, (name, e["name"])
    # read()/O_DIRECT can be beaten by a mapping: a baseline, never a limit
    roles = {e["name"]: e["role"] for e in by_name["cold_seq_scan"]["contenders"]}
    assert roles["read() 1 MiB buffers"] == "baseline"
    assert "limit" not in [roles[n] for n in roles if "read" in n]


def test_the_many_files_case_opens_distinct_files(tmp_path):
    from mmarray.bench import cases as C

    ctx = C.Context(str(tmp_path), mode="quick", npy_files=20)
    paths = ctx.npy_dataset()
    assert len(paths) == 20 and len(set(paths)) == 20
    assert all(os.path.getsize(p) == os.path.getsize(paths[0]) for p in paths)


def test_the_many_shapes_case_gives_every_file_its_own_header(tmp_path):
    from mmarray.bench import cases as C

    ctx = C.Context(str(tmp_path), mode="quick", npy_files=20)
    paths = ctx.npy_dataset_shapes()
    headers = set()
    for p in paths:
        with open(p, "rb") as f:
            first = f.read(128)
        assert first[8:10] == (118).to_bytes(2, "little")  # 128-byte headers, as the floor reads
        headers.add(first)
    assert len(paths) == len(headers) == C.SHAPE_FILES_MIN   # at least that many, whatever
                                                              # npy_files says


def _virtio(root, name, device, features):
    d = root / name
    d.mkdir(parents=True)
    (d / "device").write_text(device + "\n")
    (d / "features").write_text(features + "\n")


def test_free_page_reporting_reads_the_balloon_feature_bit(tmp_path):
    assert T.free_page_reporting(str(tmp_path / "none")) is None
    root = tmp_path / "devices"
    _virtio(root, "virtio1", "0x0002", "0" * 5 + "1" + "0" * 58)     # a disk: ignored
    assert T.free_page_reporting(str(root)) is None
    _virtio(root, "virtio0", "0x0005", "011000" + "0" * 58)          # balloon, bit 5 clear
    assert T.free_page_reporting(str(root)) is False
    _virtio(root, "virtio9", "0x0005", "011001" + "0" * 58)          # balloon, bit 5 set
    assert T.free_page_reporting(str(root)) is True


def _huge_pages_madvised(flag):
    """numpy's switch for madvise(MADV_HUGEPAGE) on large arrays; returns the old value."""
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._set_madvise_hugepage(flag)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs /proc/self/smaps")
def test_anon_huge_fraction_says_which_page_size_an_array_is_in():
    assert T.anon_huge_fraction(np.ones(0)) is None
    assert T.anon_huge_fraction(np.ones(1 << 20)[::1024]) is None  # not contiguous: unsaid
    old = _huge_pages_madvised(False)
    try:
        small_pages = np.ones(1 << 22)  # 32 MiB that numpy does not madvise: 4 KiB pages
        small_pages[::512] = 2.0
    finally:
        _huge_pages_madvised(old)
    huge = T.anon_huge_fraction(small_pages)
    thp = open("/sys/kernel/mm/transparent_hugepage/enabled").read() \
        if os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") else ""
    if "[always]" not in thp:  # with THP 'always' the kernel may use 2 MiB pages anyway
        assert huge == 0.0
    if "[never]" not in thp and thp:
        _huge_pages_madvised(True)
        try:
            big = np.ones(1 << 23)  # 64 MiB, madvised: at least some 2 MiB pages
        finally:
            _huge_pages_madvised(old)
        assert 0.0 < T.anon_huge_fraction(big) <= 1.0


@pytest.mark.slow
def test_the_cached_scans_are_bounded_by_the_files_pages_pre_mapped(quick_run):
    proc, report = quick_run
    by_name = {c["name"]: c for c in report["cases"]}
    for name in ("sum_cached_4k", "sum_cached_large"):
        case = by_name[name]
        roles = {e["name"]: e["role"] for e in case["contenders"]}
        # numpy's in-memory array is other memory (2 MiB pages, a file cached in 4 KiB pages
        # cannot be): the limit is the file's pages mapped and populated before the clock
        # (the unmap, which a second thread can overlap, is not part of the bound)
        assert roles["pre-mapped pages: sum"] == "limit", roles
        assert roles["pre-mapped pages: sum, then unmap (info)"] == "other", roles
        assert roles["in-memory np.sum (info)"] == "other", roles
        assert case["limit"] == "pre-mapped pages: sum"
        # chunks() sums chunk by chunk: its target is the same chunk-by-chunk sum over the
        # same pre-mapped pages (numpy's sum in pieces costs more than one sum)
        chunked = [n for n, r in roles.items() if r == "baseline"]
        assert len(chunked) == 1 and chunked[0].startswith("pre-mapped pages: sum in chunks")
        assert case["baseline"] == chunked[0]
        assert [t["against"] for t in case["targets"]] == ["baseline"]
        assert case["targets"][0]["contender"].startswith("mmarray chunks(")
        assert any(n.startswith("in-memory array: ") for n in case["notes"]), case["notes"]
        pre = {e["name"]: e for e in case["contenders"] if e["name"].startswith("pre-mapped")}
        for e in pre.values():
            assert e["status"] == "ok" and e["median"] > 0, e["reason"]
        assert pre["pre-mapped pages: sum"]["vs_limit"] == 1.0


def test_each_run_draws_its_own_order_seed_and_a_given_seed_repeats_the_orders(tmp_path):
    from mmarray.bench import cases as C

    assert C.Context(str(tmp_path), mode="quick").seed != \
        C.Context(str(tmp_path), mode="quick").seed      # drawn per run (2**-32 to collide)
    orders = []
    for seed in (5, 5, 6):
        ctx = C.Context(str(tmp_path), mode="quick", seed=seed)
        seen = []
        cs = [C.Contender(n, "other", lambda n=n, seen=seen: (lambda: seen.append(n) or 1e-6))
              for n in "abcd"]
        C.run_case(ctx, "orders", "orders", "µs", cs, rounds=6)
        orders.append(seen)
    assert orders[0] == orders[1] and orders[0] != orders[2]


def test_the_order_seed_is_recorded_and_printed(tmp_path):
    out = tmp_path / "r.json"
    proc = _bench("--quick", "--cases", "op_index_scalar", "--seed", "12345", "--json",
                  str(out), "--no-progress", cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["meta"]["seed"] == 12345
    assert "--seed 12345 repeats them" in proc.stdout


def test_python_floor_builds_and_unmaps_once_closed_and_its_array_is_gone(tmp_path):
    import sysconfig

    from helpers import mapped_regions

    source = os.path.join(os.path.dirname(T.__file__), "pyfloor.c")
    module, why = T.build_pyfloor(source, str(tmp_path))
    can_build = os.name == "posix" and shutil.which("cc") and os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h"))
    if module is None:
        assert not can_build, why  # a compiler and headers are here: it must build
        pytest.skip(why)
    data = tmp_path / "d.bin"
    data.write_bytes(bytes(range(256)) * 16)
    m = module.open(str(data))
    a = m.array
    assert a.dtype == np.uint8 and not a.flags.writeable
    assert a.tobytes() == data.read_bytes()
    m.close()
    assert len(mapped_regions(str(data))) == 1 and a[255] == 255  # the array keeps it
    del a
    assert mapped_regions(str(data)) == []
    with pytest.raises(ValueError):
        _ = m.array  # closed
    with pytest.raises(FileNotFoundError):
        module.open(str(tmp_path / "missing.bin"))
