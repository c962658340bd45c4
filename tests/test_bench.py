"""The benchmark harness: `python -m mmarray bench` runs, produces numbers for every case and
writes well-formed JSON. Values are not checked (they depend on the machine); only that each
case measured something and that nothing errored."""
import json
import os
import subprocess
import sys

import pytest

import mmarray

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO, "benchmarks")

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not os.path.isdir(BENCH_DIR),
    reason="the benchmark harness measures Linux page-cache behaviour; needs benchmarks/")


def _env():
    # The subprocess must import the same mmarray as this test process (an installed copy or
    # the source tree), whatever the current directory does to sys.path.
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env.pop("MMARRAY_BENCH_DIR", None)
    return env


def _bench(*args, cwd=REPO, timeout=300):
    return subprocess.run([sys.executable, "-m", "mmarray", "bench", *args], cwd=cwd,
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _load_cases_module():
    from mmarray import _bench_cli

    return _bench_cli.load_benchmarks(BENCH_DIR)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = _bench("--quick", "--json", str(out))
    assert proc.returncode == 0, f"bench --quick failed:\n{proc.stdout}\n{proc.stderr}"
    with open(out) as f:
        return proc, json.load(f)


def test_quick_run_structure(quick_run):
    proc, report = quick_run
    assert report["schema"] == "mmarray-bench/1"
    meta = report["meta"]
    for key in ("mode", "size", "rounds", "micro_rounds", "machine", "seconds", "fs_type"):
        assert key in meta
    assert meta["mode"] == "quick"
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
            assert e["role"] in ("reference", "limit", "mmarray", "other")
            assert e["status"] in ("ok", "skipped", "invalid", "error")
        for t in case["targets"]:
            assert t["status"] in ("pass", "fail", "n/a")
            assert t["text"] and "required" in t and "measured" in t


def test_every_case_produced_numbers(quick_run):
    proc, report = quick_run
    names = {c["name"] for c in report["cases"]}
    expected = {"open_close_4k", "npy_open_close", "npz_member_open", "op_index_scalar",
                "op_slice_10", "op_slice_sum", "op_ufunc_add", "sum_cached_4k",
                "sum_cached_large", "cold_seq_scan", "cold_random_4k", "live_mappings",
                "write_durable"}
    assert expected <= names, expected - names
    no_evict = report["meta"]["fs_type"] in ("tmpfs", "ramfs")
    for case in report["cases"]:
        if no_evict and case["name"].startswith("cold_"):
            continue  # files on tmpfs cannot be evicted: cold figures are refused, as they must
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


def test_quick_run_output(quick_run):
    proc, report = quick_run
    for case in report["cases"]:
        assert f"== {case['name']}" in proc.stdout
    assert "targets:" in proc.stdout
    assert "round" in proc.stderr or "[1/" in proc.stderr  # progress went to stderr
    assert report["meta"]["seconds"] < 120


def test_from_json_reprints_the_table(quick_run, tmp_path):
    proc, report = quick_run
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    again = _bench("--from-json", str(path), "--no-progress")
    assert again.returncode == 0, again.stderr
    assert "== open_close_4k" in again.stdout


def test_list_and_case_selection():
    proc = _bench("--list")
    assert proc.returncode == 0, proc.stderr
    assert "open_close_4k" in proc.stdout and "write_durable" in proc.stdout
    proc = _bench("--cases", "no_such_case*")
    assert proc.returncode == 2
    assert "matches no case" in proc.stderr


def test_missing_benchmarks_dir_is_a_clear_error(tmp_path):
    proc = _bench("--list", "--bench-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "benchmarks directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_size_is_a_clear_error():
    proc = _bench("--size", "lots", "--cases", "open_close_4k")
    assert proc.returncode == 2
    assert "cannot parse size" in proc.stderr


def test_plot(tmp_path):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        proc = _bench("--cases", "open_close_4k", "--plot", str(tmp_path / "p.png"))
        assert proc.returncode == 2
        assert "matplotlib" in proc.stderr and "pip install" in proc.stderr
        return
    out = tmp_path / "p.png"
    proc = _bench("--quick", "--cases", "open_close_4k", "--plot", str(out), "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 0


def test_timing_helpers():
    _load_cases_module()
    from _mmarray_benchmarks import _timing as T

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
    _load_cases_module()
    from _mmarray_benchmarks import _timing as T

    path = str(tmp_path / "f.bin")
    T.write_file(path, bytes(1 << 20))
    T.read_whole(path)
    assert T.resident_fraction(path) == 1.0
    if T.fs_type(str(tmp_path)) in ("tmpfs", "ramfs"):
        pytest.skip("tmpfs cannot evict")
    assert T.evict(path) < 0.05
