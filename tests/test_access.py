"""Access controls: advise, populate, prefetch, chunks, resident, evict, ranged flush."""
import gc
import os

import numpy as np
import pytest

import mmarray
from mmarray._ranges import ADVICE, byte_range
from helpers import assert_clean_exit, mapped_rss, needs_proc_maps, run_python

PAGE = mmarray._engine.PAGE_SIZE


@pytest.fixture
def big(tmp_path):
    path = tmp_path / "big.f64"
    np.arange(1 << 20, dtype=np.float64).reshape(1 << 14, 64).tofile(path)
    return path


def test_byte_range_rows_for_c_and_f_order():
    assert byte_range((10, 4), "C", 8, 2, 5) == (2 * 32, 3 * 32)
    assert byte_range((10, 4), "F", 8, 1, 3) == (1 * 80, 2 * 80)
    assert byte_range((10,), "C", 2, -3, None) == (14, 6)
    assert byte_range((10,), "C", 2, 5, 100) == (10, 10)
    assert byte_range((10,), "C", 2, 7, 3) == (14, 0)
    assert byte_range((), "C", 8, None, None) == (0, 8)


def test_byte_range_matches_numpy_slicing():
    shape = (7, 3, 5)
    ref = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    for start in (None, -9, -1, 0, 2, 6, 9):
        for stop in (None, -8, -2, 0, 3, 7, 12):
            first, n = byte_range(shape, "C", 4, start, stop)
            part = ref[start:stop]
            assert n == part.nbytes
            if n:
                assert first == (part.ctypes.data - ref.ctypes.data)


@pytest.mark.parametrize("advice", ADVICE)
def test_every_advice_is_accepted(big, advice):
    mode = "r+" if advice == "populate_write" else "r"
    with mmarray.open(big, dtype=np.float64, mode=mode, shape=(1 << 14, 64)) as m:
        m.advise(advice)
        m.advise(advice, 100, 200)
        a = m.array
        assert a[100, 0] == 6400.0  # data unchanged by any advice
        del a


def test_advise_at_open(big):
    with mmarray.open(big, dtype=np.float64, mode="r", advise="random") as m:
        assert m.array[5] == 5.0


def test_bad_advice_names_the_choices(big):
    with mmarray.open(big, mode="r") as m:
        with pytest.raises(ValueError, match="advice must be one of.*got 'fast'"):
            m.advise("fast")


def test_populate_write_on_read_only_mapping(big):
    with mmarray.open(big, mode="r") as m:
        with pytest.raises(ValueError, match="populate_write"):
            m.advise("populate_write")


def test_populate_at_open_makes_pages_resident(big):
    with mmarray.open(big, dtype=np.float64, mode="r", populate=True) as m:
        assert m.resident() == 1.0


def test_resident_after_evict_and_after_touch(tmp_path):
    path = tmp_path / "ev.bin"
    with mmarray.open(path, dtype=np.uint8, mode="w+", shape=64 * PAGE) as m:
        m.array[:] = 1
        assert m.resident() == 1.0
        m.evict()
        assert m.resident() == 0.0, "evict should drop the file's pages from the page cache"
        a = m.array
        assert int(a[: 8 * PAGE].sum()) == 8 * PAGE  # data reread from the file
        assert m.resident(0, 8 * PAGE) == 1.0
        del a


def test_evict_range_leaves_the_rest(tmp_path):
    path = tmp_path / "ev2.bin"
    with mmarray.open(path, dtype=np.uint8, mode="w+", shape=64 * PAGE) as m:
        m.array[:] = 3
        m.evict(0, 32 * PAGE)
        assert m.resident(0, 32 * PAGE) == 0.0
        assert m.resident(32 * PAGE, None) == 1.0
    assert set(path.read_bytes()) == {3}


def test_evict_refuses_copy_on_write(big):
    with mmarray.open(big, mode="c") as m:
        with pytest.raises(ValueError, match="copy-on-write"):
            m.evict()


def test_prefetch_populates_in_background(big):
    with mmarray.open(big, dtype=np.float64, mode="r") as m:
        m.evict()
        handle = m.prefetch(0, 1 << 13)
        assert handle.wait() is True
        assert handle.done
        assert m.resident(0, 1 << 13) == 1.0


def test_close_during_prefetch_defers_unmap(big):
    m = mmarray.open(big, dtype=np.float64, mode="r")
    handle = m.prefetch()
    m.close()
    handle.wait()
    gc.collect()
    assert m.exports == 0 and m.closed


@pytest.mark.parametrize("order", ["C", "F"])
def test_chunks_cover_every_row_once(tmp_path, order):
    path = tmp_path / "ch.bin"
    ref = np.arange(1000 * 6, dtype=np.int64).reshape((1000, 6) if order == "C" else (6, 1000),
                                                      order=order)
    with mmarray.open(path, dtype=np.int64, mode="w+", shape=ref.shape, order=order) as m:
        m.array[...] = ref
        parts = list(m.chunks(128))
        axis = 0 if order == "C" else 1
        assert [p.shape[axis] for p in parts] == [128] * 7 + [104]
        np.testing.assert_array_equal(np.concatenate(parts, axis=axis), ref)
        no_prefetch = list(m.chunks(300, prefetch=False))
        np.testing.assert_array_equal(np.concatenate(no_prefetch, axis=axis), ref)
        del parts, no_prefetch


def test_chunks_bad_arguments(big):
    with mmarray.open(big, mode="r") as m:
        with pytest.raises(ValueError, match="rows must be a positive"):
            list(m.chunks(0))
        with pytest.raises(ValueError, match="ahead must be"):
            list(m.chunks(10, ahead=0))


def test_chunks_abandoned_midway_then_close(big):
    m = mmarray.open(big, dtype=np.float64, mode="r")
    it = m.chunks(16, ahead=4)
    first = next(it)
    it.close()  # stops the background thread
    m.close()
    assert first[0] == 0.0
    del first, it
    gc.collect()
    assert m.exports == 0


def test_close_while_iterating_chunks_keeps_views_valid(tmp_path):
    path = tmp_path / "cl.bin"
    np.ones((4096, 128), dtype=np.float64).tofile(path)
    proc = run_python(f"""
        import mmarray, gc
        m = mmarray.open({str(path)!r}, dtype="float64", mode="r", shape=(4096, 128))
        total = 0.0
        for i, chunk in enumerate(m.chunks(64)):
            if i == 3:
                m.close()
            total += float(chunk.sum())
        assert total == 4096 * 128, total
        del chunk; gc.collect()
        assert m.exports == 0
        print("ok")
    """)
    assert_clean_exit(proc)


def test_scan_through_chunks_matches_sum(big):
    with mmarray.open(big, dtype=np.float64, mode="r", shape=(1 << 14, 64)) as m:
        total = sum(float(c.sum()) for c in m.chunks(1000))
        assert total == float(np.arange(1 << 20, dtype=np.float64).sum())


def test_region_operations_after_close_raise(big):
    m = mmarray.open(big, mode="r+")
    m.close()
    for call in (lambda: m.advise("random"), m.resident, m.evict, m.prefetch,
                 lambda: m.flush(0, 10)):
        with pytest.raises(ValueError, match="mapping is closed"):
            call()


def test_region_operations_on_empty_mapping(big):
    with mmarray.open(big, mode="r+", shape=0) as m:
        m.flush()
        m.advise("willneed")
        assert m.resident() == 1.0
        m.evict()


@needs_proc_maps
def test_prefetch_and_evict_change_the_page_tables(tmp_path):
    path = tmp_path / "rss.bin"
    size = 256 * PAGE
    with mmarray.open(path, dtype=np.uint8, mode="w+", shape=size) as m:
        m.array[:] = 1  # written through this mapping: every page is mapped
        m.evict()
        assert mapped_rss(path) == 0  # MADV_DONTNEED took the page-table entries out
        m.prefetch(0, size // 2).wait()
        assert size // 2 <= mapped_rss(path) <= size // 2 + 16 * PAGE  # fault-around slack


@needs_proc_maps
def test_chunks_populate_ahead_of_the_consumer(tmp_path):
    path = tmp_path / "ahead.bin"
    rows, chunk = 64 * PAGE, 8 * PAGE
    with mmarray.open(path, dtype=np.uint8, mode="w+", shape=rows) as m:
        m.array[:] = 2
        m.evict()
        it = m.chunks(chunk, ahead=3)
        first = next(it)  # nothing touched by this thread yet
        deadline = 200
        while mapped_rss(path) < 3 * chunk and deadline:  # the populator works meanwhile
            import time
            time.sleep(0.01)
            deadline -= 1
        # chunks 1..3 were populated in the background; chunk 0 is the consumer's own
        assert 3 * chunk <= mapped_rss(path) <= 4 * chunk + 16 * PAGE
        assert int(first.sum()) == 2 * chunk
        total = int(first.sum()) + sum(int(c.sum()) for c in it)
        assert total == 2 * rows
        del first


def test_dontneed_on_copy_on_write_is_refused_and_keeps_private_writes(tmp_path):
    """MADV_DONTNEED on a private mapping discards its modified pages: refused, as evict()."""
    path = tmp_path / "cow.bin"
    path.write_bytes(bytes(3 * PAGE))
    with mmarray.open(path, dtype=np.uint8, mode="c") as m:
        a = m.array
        a[:] = 5
        for start, stop in [(PAGE + 5, PAGE + 6), (PAGE, 2 * PAGE), (None, None)]:
            with pytest.raises(ValueError, match="'dontneed'.*mode 'c'.*private changes"):
                m.advise("dontneed", start, stop)
        assert (a == 5).all()
        m.advise("willneed")  # other advice stays allowed
        del a


@needs_proc_maps
def test_chunks_drop_behind_keeps_the_resident_size_within_a_few_chunks(tmp_path):
    path = tmp_path / "big.f8"
    rows, width = 1 << 14, 512           # 64 MiB of float64, chunks of 4 MiB
    with mmarray.open(path, dtype="f8", mode="w+", shape=(rows, width)) as w:
        w.array[:] = 1.0
    for drop in (False, True):
        with mmarray.open(path, dtype="f8", mode="r", shape=(rows, width)) as m:
            peak = 0
            total = 0.0
            for chunk in m.chunks(1024, drop_behind=drop):
                total += float(chunk.sum())
                peak = max(peak, mapped_rss(path))
            assert total == rows * width
            if drop:
                assert peak <= 5 * 4 << 20, peak   # a few chunks: the one in use and ahead
            else:
                assert peak >= 32 << 20, peak      # without it the scan keeps its pages


@needs_proc_maps
def test_chunks_drop_behind_with_prefetch_leaves_no_pages_behind(tmp_path):
    # The populating thread's fault in flight when the consumer released a chunk used to map
    # a 2 MiB folio back behind it (6 GiB scan: 512 MiB left mapped). Releases now wait until
    # the populator has moved past; after the loop nothing it passed stays mapped.
    path = tmp_path / "sparse.f4"
    rows, width = 1 << 18, 1024          # 1 GiB of float32 holes, chunks of 8 MiB
    with open(path, "wb") as f:
        f.truncate(rows * width * 4)
    for _ in range(3):
        with mmarray.open(path, dtype="f4", mode="r", shape=(rows, width)) as m:
            m.evict(None, None)
            peak, total = 0, 0.0
            for chunk in m.chunks(2048, drop_behind=True):
                total += float(chunk[::64].sum())
                peak = max(peak, mapped_rss(path))
            left = mapped_rss(path)
            assert total == 0.0
            assert peak <= 8 * (8 << 20), peak   # a few chunks, not the file
            assert left <= 2 << 20, left         # what the loop passed is released


@needs_proc_maps
def test_chunks_drop_behind_with_rows_across_pages_leaves_no_pages_behind(tmp_path):
    # Chunk boundaries inside a page: the consumer's fault on its next chunk mapped the folio
    # holding it back, rows already released included, and nothing released them again.
    path = tmp_path / "odd.u1"
    offset, width = 100, 3000
    rows = (1 << 30) // width
    with open(path, "wb") as f:
        f.truncate(offset + rows * width)
    with mmarray.open(path, dtype="u1", mode="r", offset=offset, shape=(rows, width)) as m:
        for chunk in m.chunks(64, ahead=64, drop_behind=True):
            chunk.reshape(-1)[::4096].sum()
        del chunk
        assert mapped_rss(path) <= 1 << 20


@pytest.mark.parametrize("prefetch", [False, True])
def test_resize_during_a_drop_behind_loop_is_refused_until_the_loop_ends(tmp_path, prefetch):
    # Resizing moved the view: the loop's releases then went to the new one and the pages of
    # the view its chunks were on stayed resident (a 64 MiB file: 61-64 MiB left mapped).
    path = tmp_path / "r.f8"
    with mmarray.open(path, dtype="f8", mode="w+", shape=(4096, 64)) as m:
        it = m.chunks(256, prefetch=prefetch, ahead=64, drop_behind=True)
        seen = []
        for i, chunk in enumerate(it):
            if i == 8:  # the populator (ahead=64 chunks: all of them) has long finished
                with pytest.raises(BufferError, match="chunks.*resize once it is done"):
                    m.resize((8192, 64))
            seen.append(chunk.shape[0])
        assert seen == [256] * 16
        m.resize((8192, 64))                   # the loop is over: allowed again
        assert m.shape == (8192, 64)
        for _chunk in m.chunks(256, prefetch=prefetch, drop_behind=True):
            break                              # the generator goes with the loop
        del _chunk
        m.resize((4096, 64))
        assert m.shape == (4096, 64)


def test_resize_during_a_loop_without_drop_behind_is_allowed(tmp_path):
    # Nothing is released there: the chunks stay on the view they were made on.
    with mmarray.open(tmp_path / "n.f8", dtype="f8", mode="w+", shape=(1024, 8)) as m:
        m.array[:] = 1.0
        total = 0.0
        for i, chunk in enumerate(m.chunks(128, prefetch=False)):
            if i == 1:
                m.resize((2048, 8))
            total += float(chunk.sum())
        assert total == 1024 * 8
        assert m.shape == (2048, 8)


def test_pin_refuses_resize_until_released_and_counts_one_export(tmp_path):
    with mmarray.open(tmp_path / "h.bin", mode="w+", shape=4096) as m:
        pin = mmarray._engine._Pin(m)
        assert m.exports == 1
        with pytest.raises(BufferError, match="resize once it is done"):
            m.resize(8192)
        pin.release()
        pin.release()                          # idempotent
        assert m.exports == 0
        m.resize(8192)
        pin = mmarray._engine._Pin(m)
        del pin                                # garbage: released too
        m.resize(4096)
        assert m.shape == (4096,)
    with pytest.raises(ValueError, match="closed"):
        mmarray._engine._Pin(m)
    with pytest.raises(TypeError):
        mmarray._engine._Pin(None)


def test_pin_keeps_a_closed_mapping_mapped_until_released(tmp_path):
    path = tmp_path / "k.bin"
    path.write_bytes(b"\x07" * 4096)
    m = mmarray.open(path, mode="r")
    pin = mmarray._engine._Pin(m)
    m.close()
    assert m.closed and m.exports == 1
    pin.release()
    assert m.exports == 0


def test_a_drop_behind_loop_that_cannot_start_its_thread_leaves_no_pin(tmp_path, monkeypatch):
    import threading

    def refuse(self):
        raise RuntimeError("can't start new thread")
    with mmarray.open(tmp_path / "t.f8", dtype="f8", mode="w+", shape=(1024, 8)) as m:
        monkeypatch.setattr(threading.Thread, "start", refuse)
        with pytest.raises(RuntimeError, match="start new thread") as info:
            next(m.chunks(64, drop_behind=True))
        monkeypatch.undo()
        kept = info.value                      # the traceback keeps the generator's frame
        m.resize((2048, 8))
        assert m.shape == (2048, 8) and kept is not None


def test_pin_or_export_freed_by_the_cycle_collector_is_released(tmp_path):
    # The collector used to clear their reference to the mapping before __dealloc__ ran:
    # the export stayed counted, the mapping un-resizable and mapped after close().
    with mmarray.open(tmp_path / "g.bin", mode="w+", shape=4096) as m:
        pin = mmarray._engine._Pin(m)
        loop = [pin]
        loop.append(loop)
        export = m.array.base
        loop2 = [export]
        loop2.append(loop2)
        del pin, loop, export, loop2
        gc.collect()
        assert m.exports == 0
        m.resize(8192)
        assert m.shape == (8192,)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_keeps_the_pin_of_a_drop_behind_loop():
    # Holds of operations running without the GIL are dropped in a child (their threads are
    # gone); the pin of a Python loop is not: the loop runs on in the child.
    code = """
        import os, tempfile, mmarray
        path = os.path.join(tempfile.mkdtemp(), "f.f8")
        with mmarray.open(path, dtype="f8", mode="w+", shape=(1024, 64)) as m:
            g = m.chunks(64, prefetch=False, drop_behind=True)
            next(g)
            pid = os.fork()
            if pid:
                os.waitpid(pid, 0)           # the child's lines first, whole
            who = "child" if pid == 0 else "parent"
            try:
                m.resize((2048, 64))
                out = f"resized {who}\\n"
            except BufferError:
                out = f"refused {who}\\n"
            n = sum(1 for _ in g)
            m.resize((2048, 64))
            os.write(1, (out + f"after {n} {m.shape} {who}\\n").encode())
            if pid == 0:
                os._exit(0)
    """
    proc = run_python(code, timeout=120)
    assert_clean_exit(proc)
    lines = sorted(proc.stdout.split("\n"))
    assert "refused child" in lines and "refused parent" in lines, proc.stdout
    assert "after 15 (2048, 64) child" in lines and "after 15 (2048, 64) parent" in lines


def test_populate_ahead_progress_is_its_start_then_its_end(tmp_path):
    with mmarray.open(tmp_path / "p.bin", dtype="u1", mode="w+", shape=(1 << 20,)) as m:
        loop = mmarray._engine._PopulateAhead(m, PAGE, 1 << 20, PAGE, 1 << 20)
        assert loop.progress == PAGE
        loop.run()
        assert loop.progress == 1 << 20


def test_chunks_drop_behind_in_a_writable_mapping_keeps_the_writes(tmp_path):
    path = tmp_path / "w.i8"
    with mmarray.open(path, dtype="i8", mode="w+", shape=(4096, 64)) as m:
        for i, chunk in enumerate(m.chunks(256, drop_behind=True)):
            chunk[:] = i
        assert m.array[::256, 0].tolist() == list(range(16))  # read back from the file
    assert np.fromfile(path, "i8").reshape(4096, 64)[-1, -1] == 15


def test_chunks_drop_behind_refuses_copy_on_write(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(b"\0" * 4096)
    with mmarray.open(path, mode="c") as m:
        with pytest.raises(ValueError, match="copy-on-write"):
            m.chunks(16, drop_behind=True)


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise (Windows)")
@pytest.mark.parametrize("mode, offset", [("r", 0), ("r+", 0), ("r", 128)])
def test_chunks_drop_behind_cache_leaves_the_file_out_of_the_page_cache(tmp_path, mode, offset):
    from mmarray.bench._timing import resident_fraction

    path = tmp_path / "cached.f8"
    rows, width = 4096, 512            # 16 MiB of float64, chunks of 1 MiB (< a 2 MiB folio)
    with open(path, "wb") as f:
        f.write(b"h" * offset)    # offset 128: folios and chunks are not aligned alike
        np.arange(rows * width, dtype="f8").tofile(f)
        f.flush()
        os.fsync(f.fileno())     # clean pages: POSIX_FADV_DONTNEED drops only those
    with mmarray.open(path, dtype="f8", mode=mode, offset=offset, shape=(rows, width)) as m:
        total = 0.0
        for i, chunk in enumerate(m.chunks(256, drop_behind="cache")):
            if mode == "r+":
                chunk[0, 0] = -i          # dirty pages: written to the file before the drop
            total += float(chunk[1:].sum())
    assert resident_fraction(str(path)) < 0.25
    back = np.fromfile(path, "f8", offset=offset).reshape(rows, width)
    if mode == "r+":
        assert back[::256, 0].tolist() == [-float(i) for i in range(16)]
    data = np.arange(rows * width, dtype="f8").reshape(rows, width)
    assert total == data.sum() - data[::256].sum()


@pytest.mark.parametrize("bad, error", [("yes", ValueError), (2, TypeError), (None, TypeError)])
def test_chunks_drop_behind_rejects_values_other_than_bool_or_cache(tmp_path, bad, error):
    path = tmp_path / "b.bin"
    path.write_bytes(b"\0" * 4096)
    with mmarray.open(path, mode="r") as m:
        with pytest.raises(error, match=r"drop_behind must be False, True or 'cache', got"):
            m.chunks(16, drop_behind=bad)
