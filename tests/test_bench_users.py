"""The user cases of the benchmark (mmarray.bench._users): the nanoGPT loader and the
out-of-core column means, run small."""
import statistics
import sys

import pytest

from mmarray.bench import _harness as H
from mmarray.bench import _timing as T
from mmarray.bench import _users as U

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="peak RSS is read from /proc (Linux)")


def _ctx(tmp_path):
    return H.Context(str(tmp_path), mode="quick", rounds=2)


def test_loader_reports_time_cpu_and_peak_rss_per_batch(tmp_path):
    [res] = U.case_loader(_ctx(tmp_path))
    assert [e["status"] for e in res["contenders"]] == ["ok"] * 4, res["contenders"]
    for e in res["contenders"]:
        assert 0 < e["median"] < 1e6, e          # µs per batch
        assert e["cpu_median"] > 0 and e["peak_rss"] > res["params"]["baseline_rss"] / 2
    assert {t["status"] for t in res["targets"]} <= {"pass", "fail"}
    # "opened once" is judged against the re-created memmap and, like for like, the one kept
    # open (the baseline role)
    assert res["baseline"] == "numpy.memmap kept open"
    assert [(t["contender"], t["against"]) for t in res["targets"]][:2] == [
        ("mmarray opened once", "reference"), ("mmarray opened once", "baseline")]
    assert not (tmp_path / "train.bin").exists()


def test_column_means_drop_behind_keeps_the_peak_rss_down(tmp_path):
    [res] = U.case_column_means(_ctx(tmp_path))
    by = {e["name"]: e for e in res["contenders"]}
    assert all(e["status"] == "ok" for e in by.values()), res["contenders"]
    rows = res["params"]["chunk_rows"]
    plain, drop = by[f"mmarray chunks({rows})"], by[f"mmarray chunks({rows}, drop_behind=True)"]
    # 256 MiB file, 8 MiB chunks: without drop_behind the scan keeps its pages
    assert plain["peak_rss"] - drop["peak_rss"] > 100 << 20, (plain["peak_rss"],
                                                             drop["peak_rss"])
    assert drop["info"]["peak_rss_mib"] < 300
    # the time target: the median per-round ratio; the best samples' ratio kept beside it
    ratios = [d / p for d, p in zip(drop["samples_s"], plain["samples_s"])]
    assert drop["info"]["time_vs_chunks"] == round(statistics.median(ratios), 3)
    best = min(drop["samples_s"]) / min(plain["samples_s"])
    assert drop["info"]["time_vs_chunks_best"] == round(best, 3)
    assert [t["status"] for t in res["targets"]][0] == "pass"


def _resident_at_each_child(monkeypatch):
    """Record the cached fraction of the case's file each time a contender's child starts."""
    seen = []
    real = U._child

    def child(spec, timeout):
        if spec["kind"] == "means":
            seen.append(T.resident_fraction(spec["path"]))
        return real(spec, timeout)
    monkeypatch.setattr(U, "_child", child)
    return seen


def test_column_means_cached_times_the_loops_with_the_file_in_the_page_cache(tmp_path,
                                                                             monkeypatch):
    seen = _resident_at_each_child(monkeypatch)
    [res] = U.case_column_means_cached(_ctx(tmp_path))
    by = {e["name"]: e for e in res["contenders"]}
    assert all(e["status"] == "ok" for e in by.values()), res["contenders"]
    assert res["name"] == "column_means_cached" and res["params"]["cached"] is True
    assert res["cache_state"].startswith("cached in large folios"), res["cache_state"]
    assert "held in the page cache" in res["title"]
    assert len(seen) >= 8 and min(seen) >= 0.99, seen  # every sample starts cached
    rows = res["params"]["chunk_rows"]
    plain, drop = by[f"mmarray chunks({rows})"], by[f"mmarray chunks({rows}, drop_behind=True)"]
    assert plain["peak_rss"] - drop["peak_rss"] > 100 << 20, (plain["peak_rss"],
                                                             drop["peak_rss"])
    ratios = [d / p for d, p in zip(drop["samples_s"], plain["samples_s"])]
    assert drop["info"]["time_vs_chunks"] == round(statistics.median(ratios), 3)
    assert [t["text"] for t in res["targets"]] == [
        "peak RSS of chunks(drop_behind=True) under 300 MiB",
        "chunks(drop_behind=True) within 1.05× the time of chunks()"]
    assert {t["status"] for t in res["targets"]} <= {"pass", "fail"}
    assert not (tmp_path / "columns.f32").exists()


def test_column_means_starts_every_sample_from_an_evicted_file(tmp_path, monkeypatch):
    seen = _resident_at_each_child(monkeypatch)
    [res] = U.case_column_means(_ctx(tmp_path))
    assert res["params"]["cached"] is False
    assert len(seen) >= 8 and max(seen) <= 0.01, seen


def test_column_means_cached_is_unavailable_when_the_file_does_not_stay_cached(tmp_path,
                                                                              monkeypatch):
    real = T.set_cache_state

    def short_of_memory(path, state):
        info = real(path, state)
        T.evict(path)  # as if the kernel had to drop the pages at once
        return dict(info, resident=0.4, verified=False)
    monkeypatch.setattr(T, "set_cache_state", short_of_memory)
    [res] = U.case_column_means_cached(_ctx(tmp_path))
    for e in res["contenders"]:
        assert e["status"] == "skipped", e
        assert "does not stay in the page cache (40% resident" in e["reason"], e["reason"]
    assert {t["status"] for t in res["targets"]} == {"n/a"}
    assert not (tmp_path / "columns.f32").exists()


def test_a_contender_reading_the_wrong_bytes_is_invalid(tmp_path, monkeypatch):
    real = U._child

    def wrong(spec, timeout):
        out = real(spec, timeout)
        if spec.get("way") == "mmarray opened once":
            out["check"] += 1
        return out

    monkeypatch.setattr(U, "_child", wrong)
    [res] = U.case_loader(_ctx(tmp_path))
    by = {e["name"]: e for e in res["contenders"]}
    assert by["mmarray opened once"]["status"] == "invalid"
    assert "checksum" in by["mmarray opened once"]["reason"]
    assert by["mmarray opened per batch"]["status"] == "ok"


def test_a_child_that_fails_is_an_error_with_its_last_line(tmp_path):
    with pytest.raises(RuntimeError, match="unknown way"):
        U._child({"kind": "loader", "way": "no such way", "path": str(tmp_path / "x"),
                  "offsets": []}, timeout=60)
    assert T.Sample(1.0, cpu_s=0.5).cpu_s == 0.5

