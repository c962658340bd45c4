"""The core engine: mmarray.open, Mapping, explicit close, bad input."""
import gc
import os
import pathlib
import re
import sys
import threading

import numpy as np
import pytest

import mmarray
from helpers import assert_clean_exit, mapped_bytes, mapped_regions, needs_proc_maps, run_python

BYTES = np.arange(65536 + 13, dtype=np.int64) % 251


# -- roundtrips ----------------------------------------------------------------------------

def test_w_plus_creates_file_and_writes_reach_it(tmp_path):
    path = tmp_path / "new.bin"
    with mmarray.open(path, dtype=np.float32, mode="w+", shape=(3, 4)) as m:
        a = m.array
        a[:] = np.arange(12, dtype=np.float32).reshape(3, 4)
        m.flush()
    del a
    assert path.stat().st_size == 48
    np.testing.assert_array_equal(np.fromfile(path, dtype=np.float32), np.arange(12))


def test_r_plus_writes_reach_the_file(data_file):
    with mmarray.open(data_file, mode="r+") as m:
        m.array[100:104] = [1, 2, 3, 4]
    assert data_file.read_bytes()[100:104] == bytes([1, 2, 3, 4])


def test_r_is_read_only(data_file):
    with mmarray.open(data_file, mode="r") as m:
        a = m.array
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1
        with memoryview(m) as mv:
            assert mv.readonly
            with pytest.raises(TypeError, match="read-only"):
                mv[0:1] = b"x"
        with pytest.raises(ValueError, match="WRITEABLE"):
            np.frombuffer(m, dtype=np.uint8).setflags(write=True)
        with pytest.raises(ValueError, match="WRITEABLE"):
            a.setflags(write=True)
        with pytest.raises(ValueError, match="WRITEABLE"):
            a[2:5].setflags(write=True)
        del a


def test_c_mode_writes_never_reach_the_file(data_file):
    before = data_file.read_bytes()
    with mmarray.open(data_file, mode="c") as m:
        a = m.array
        assert a.flags.writeable
        a[:] = 7
        assert (a == 7).all()
        m.flush()  # a no-op for 'c'
        del a
    assert data_file.read_bytes() == before


def test_r_roundtrip_matches_numpy_memmap(data_file):
    with mmarray.open(data_file, mode="r") as m:
        a = m.array
        np.testing.assert_array_equal(a, np.memmap(data_file, mode="r"))
        np.testing.assert_array_equal(a, BYTES)
        del a


def test_mode_long_names_are_accepted(data_file):
    for long_name, short in [("readonly", "r"), ("copyonwrite", "c"), ("readwrite", "r+")]:
        with mmarray.open(data_file, mode=long_name) as m:
            assert m.mode == short


@pytest.mark.parametrize("offset", [1, 7, 4095, 4096, 4097, 65537])
def test_unaligned_offsets_read_and_write_the_right_bytes(data_file, offset):
    n = 5
    with mmarray.open(data_file, dtype=np.uint8, mode="r", offset=offset, shape=n) as m:
        a = m.array
        np.testing.assert_array_equal(a, BYTES[offset:offset + n])
        assert m.offset == offset
        del a
    with mmarray.open(data_file, dtype=np.uint8, mode="r+", offset=offset, shape=3) as m:
        m.array[:] = [200, 201, 202]
    raw = data_file.read_bytes()
    assert raw[offset:offset + 3] == bytes([200, 201, 202])
    assert raw[offset - 1] == (offset - 1) % 251  # the byte before is untouched
    assert raw[offset + 3] == (offset + 3) % 251  # and the byte after


def test_offset_above_4gib_on_sparse_file(tmp_path):
    path = tmp_path / "sparse.bin"
    offset = 6 * 2**30 + 12345
    with open(path, "wb") as f:
        f.truncate(offset + 4096)
        f.seek(offset)
        f.write(np.arange(10, dtype=np.int16).tobytes())
    try:
        with mmarray.open(path, dtype=np.int16, mode="r", offset=offset, shape=10) as m:
            a = m.array
            np.testing.assert_array_equal(a, np.arange(10))
            del a
        with mmarray.open(path, dtype=np.int16, mode="r+", offset=offset, shape=10) as m:
            m.array[3] = -1
        with open(path, "rb") as f:
            f.seek(offset + 6)
            assert f.read(2) == np.int16(-1).tobytes()
    finally:
        path.unlink()


@pytest.mark.parametrize("order", ["C", "F"])
def test_c_and_f_order(tmp_path, order):
    path = tmp_path / "o.bin"
    ref = np.arange(24, dtype=np.int32).reshape(2, 3, 4)
    with mmarray.open(path, dtype=np.int32, mode="w+", shape=ref.shape, order=order) as m:
        a = m.array
        a[...] = ref
        assert a.flags.f_contiguous == (order == "F")
        assert m.order == order
        del a
    expected = ref.tobytes(order=order)
    assert path.read_bytes() == expected
    ref_mm = np.memmap(path, dtype=np.int32, mode="r", shape=ref.shape, order=order)
    with mmarray.open(path, dtype=np.int32, mode="r", shape=ref.shape, order=order) as m:
        np.testing.assert_array_equal(m.array, ref_mm)


def test_structured_dtype_roundtrip(tmp_path):
    dt = np.dtype([("x", "<f8"), ("n", "<i2"), ("tag", "S3")], align=False)
    path = tmp_path / "s.bin"
    ref = np.zeros(5, dtype=dt)
    ref["x"] = np.linspace(0, 1, 5)
    ref["n"] = [1, -2, 3, -4, 5]
    ref["tag"] = [b"a", b"bb", b"ccc", b"d", b"e"]
    with mmarray.open(path, dtype=dt, mode="w+", shape=5) as m:
        m.array[:] = ref
    with mmarray.open(path, dtype=dt, mode="r") as m:
        a = m.array
        assert a.dtype == dt and a.shape == (5,)
        np.testing.assert_array_equal(a, ref)
        del a


def test_file_object(data_file):
    with open(data_file, "rb") as f:
        with mmarray.open(f, mode="r", offset=3, shape=4) as m:
            assert m.filename is None
            np.testing.assert_array_equal(m.array, BYTES[3:7])
    with open(data_file, "r+b") as f:
        m = mmarray.open(f, mode="r+", shape=2)
    # The file object is closed; the mapping holds no descriptor and still works.
    m.array[:] = [9, 9]
    m.close()
    assert data_file.read_bytes()[:2] == b"\t\t"


def test_file_object_with_buffered_writes_is_flushed_first(tmp_path):
    path = tmp_path / "buf.bin"
    with open(path, "w+b") as f:
        f.write(b"\x05" * 100)  # still in Python's buffer
        with mmarray.open(f, mode="r", shape=100) as m:
            assert (m.array == 5).all()


def test_pathlib_and_bytes_paths(data_file):
    for spec in (pathlib.Path(data_file), os.fsencode(data_file), str(data_file)):
        with mmarray.open(spec, mode="r") as m:
            assert m.filename == os.path.abspath(data_file)
            assert m.shape == (len(BYTES),)


def test_relative_path_gives_absolute_filename(data_file, monkeypatch):
    monkeypatch.chdir(data_file.parent)
    with mmarray.open(data_file.name, mode="r") as m:
        assert m.filename == str(data_file)


def test_shape_none_infers_length(data_file):
    with mmarray.open(data_file, dtype=np.uint8, mode="r", offset=13) as m:
        assert m.shape == (65536,)
    with mmarray.open(data_file, dtype=np.uint32, mode="r", offset=13) as m:
        assert m.shape == (16384,)
        assert m.nbytes == 65536


def test_shape_none_not_a_multiple_of_itemsize(data_file):
    with pytest.raises(ValueError, match="not a multiple of the itemsize 8"):
        mmarray.open(data_file, dtype=np.float64, mode="r")


def test_r_plus_grows_short_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"\x01\x02")
    with mmarray.open(path, mode="r+", shape=10000) as m:
        a = m.array
        assert list(a[:3]) == [1, 2, 0]
        del a
    assert path.stat().st_size == 10000


def test_w_plus_truncates_existing_file(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(b"\xff" * 100000)
    with mmarray.open(path, mode="w+", shape=10) as m:
        assert (m.array == 0).all()
    assert path.stat().st_size == 10


def test_zero_size_shape_gives_empty_array(data_file, tmp_path):
    with mmarray.open(data_file, dtype=np.float64, mode="r", shape=(0, 3)) as m:
        a = m.array
        assert a.shape == (0, 3) and a.dtype == np.float64 and type(a) is np.ndarray
        assert m.nbytes == 0
        del a
    new = tmp_path / "empty.bin"
    with mmarray.open(new, mode="w+", shape=0) as m:
        assert m.array.size == 0
    assert new.exists() and new.stat().st_size == 0
    with pytest.raises(FileNotFoundError):
        mmarray.open(tmp_path / "missing.bin", mode="r", shape=0)


@needs_proc_maps
def test_zero_size_mapping_makes_no_mmap_call(data_file):
    with mmarray.open(data_file, mode="r", shape=0) as m:
        a = m.array
        assert mapped_regions(data_file) == []
        del a


def test_array_is_plain_ndarray_and_ufunc_results_are_plain(data_file):
    with mmarray.open(data_file, mode="r") as m:
        a = m.array
        assert type(a) is np.ndarray
        assert type(a + 1) is np.ndarray
        assert type(a[10:20]) is np.ndarray
        assert type(a.sum()) is np.uint64
        del a


# -- closing -------------------------------------------------------------------------------

def test_close_without_exports_unmaps_now(data_file):
    m = mmarray.open(data_file, mode="r")
    a = m.array
    del a
    assert m.exports == 0
    m.close()
    assert m.closed
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs Linux /proc/self/maps to see the unmap")
    assert mapped_regions(data_file) == []


def test_close_is_idempotent(data_file):
    m = mmarray.open(data_file, mode="r")
    m.close()
    m.close()
    m.close(strict=True)
    assert m.closed


@needs_proc_maps
def test_close_with_live_view_defers_unmap(data_file):
    m = mmarray.open(data_file, mode="r+")
    a = m.array
    view = a[10:20].reshape(2, 5)
    del a
    m.close()
    assert m.closed and m.exports == 1
    assert mapped_regions(data_file), "unmapped while a view was alive"
    view[0, 0] = 42  # still valid memory
    assert view[0, 0] == 42
    del view
    gc.collect()
    assert m.exports == 0
    assert mapped_regions(data_file) == []
    assert data_file.read_bytes()[10] == 42


def test_close_with_live_memoryview_defers_unmap(data_file):
    m = mmarray.open(data_file, mode="r")
    mv = memoryview(m)
    assert m.exports == 1
    m.close()
    assert mv[5] == 5
    mv.release()
    assert m.exports == 0


def test_strict_close_with_exports_raises_and_changes_nothing(data_file):
    m = mmarray.open(data_file, mode="r")
    a, b = m.array, m.array
    with pytest.raises(BufferError, match="2 export"):
        m.close(strict=True)
    assert not m.closed and m.exports == 2
    assert m.array[3] == 3  # still open
    del a, b
    m.close(strict=True)
    assert m.closed


def test_after_close_new_buffers_array_and_flush_raise(data_file):
    m = mmarray.open(data_file, mode="r+")
    m.close()
    with pytest.raises(ValueError, match="mapping is closed"):
        m.array
    with pytest.raises(ValueError, match="mapping is closed"):
        memoryview(m)
    with pytest.raises(ValueError, match="mapping is closed"):
        m.flush()


def test_context_manager_closes(data_file):
    with mmarray.open(data_file, mode="r") as m:
        assert not m.closed
    assert m.closed


def test_module_close_walks_base(data_file):
    m = mmarray.open(data_file, mode="r")
    a = m.array
    view = a[5:9][::2]
    mmarray.close(view)
    assert m.closed
    assert list(view) == [5, 7]
    assert mmarray.mapping_of(view) is m


def test_module_close_refuses_other_arrays():
    with pytest.raises(TypeError, match="not backed by an mmarray mapping"):
        mmarray.close(np.zeros(3))
    with pytest.raises(TypeError):
        mmarray.close(np.memmap.__new__(np.memmap, 3))


def test_properties(data_file):
    with mmarray.open(data_file, dtype="u2", mode="r", offset=1, shape=(2, 3)) as m:
        assert m.dtype == np.dtype("u2")
        assert m.shape == (2, 3)
        assert m.offset == 1
        assert m.mode == "r"
        assert m.nbytes == 12
        assert m.filename == os.path.abspath(data_file)
        assert "Mapping open" in repr(m)


def test_mapping_of_an_unnamed_file_object_cannot_be_pickled(data_file):
    import pickle

    with open(data_file, "rb") as f, mmarray.open(f, mode="r") as m:
        with pytest.raises(TypeError, match="file object without a name"):
            pickle.dumps(m)


def test_flush_ranges_and_async(tmp_path):
    path = tmp_path / "f.bin"
    with mmarray.open(path, dtype=np.float64, mode="w+", shape=(100, 10)) as m:
        m.array[:] = 2.0
        m.flush(10, 20)
        m.flush(-5, None, sync=False)
        m.flush(50, 10)  # empty range: nothing to do
        m.flush()
    assert (np.fromfile(path) == 2.0).all()


def test_crash_regression_array_copy_false_then_close(tmp_path):
    """NumPy mailing list, "np.array, copy=False and memmap" (2017): an array built on a mapped
    region that was closed crashed the interpreter. Here close defers the unmap."""
    path = tmp_path / "crash.bin"
    np.arange(1000, dtype=np.float32).tofile(path)
    proc = run_python(f"""
        import numpy as np, mmarray, gc
        m = mmarray.open({str(path)!r}, dtype="float32", mode="r+")
        y = np.asarray(m.array, dtype="float32")   # no copy: shares the mapping
        x = np.array(y, copy=False) if np.__version__ < "2" else np.asarray(y)
        m.close()
        del m
        gc.collect()
        assert float(x.sum()) == float(np.arange(1000, dtype=np.float32).sum()), x.sum()
        x[:] = 1.5
        assert float(x.sum()) == 1500.0
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"
    assert (np.fromfile(path, dtype=np.float32) == 1.5).all()


def test_frombuffer_memoryview_export_survives_close_in_subprocess(tmp_path):
    path = tmp_path / "fb.bin"
    path.write_bytes(b"\x07" * 8192)
    proc = run_python(f"""
        import numpy as np, mmarray
        m = mmarray.open({str(path)!r}, mode="r")
        a = np.frombuffer(m, dtype=np.uint8)
        m.close()
        assert m.exports == 1 and int(a.sum()) == 7 * 8192
        del a
        assert m.exports == 0
        print("ok")
    """)
    assert_clean_exit(proc)


# -- bad input -----------------------------------------------------------------------------

def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        mmarray.open(tmp_path / "nope.bin", mode="r")
    assert info.value.filename == os.path.abspath(tmp_path / "nope.bin")


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_directory_is_is_a_directory_error(tmp_path, mode):
    with pytest.raises(IsADirectoryError):
        mmarray.open(tmp_path, mode=mode)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores file permissions")
def test_no_permission_is_permission_error(data_file):
    data_file.chmod(0o444)
    with pytest.raises(PermissionError):
        mmarray.open(data_file, mode="r+")


def test_no_permission_is_permission_error_in_subprocess_as_nobody(data_file):
    """Root ignores permission bits, so drop privileges in a child to see EACCES."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("covered by test_no_permission_is_permission_error")
    data_file.chmod(0o400)
    os.chmod(data_file.parent, 0o755)
    proc = run_python(f"""
        import os, mmarray
        os.setgid(65534); os.setuid(65534)
        try:
            mmarray.open({str(data_file)!r}, mode="r")
        except PermissionError as e:
            print("PermissionError", e.filename)
    """)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("PermissionError")


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_write_mode_on_read_only_file_object_is_permission_error(data_file, mode):
    before = data_file.read_bytes()
    with open(data_file, "rb") as f:
        with pytest.raises(PermissionError, match=f"mode '{re.escape(mode)}' needs a file "
                                                  f"object open for writing"):
            mmarray.open(f, mode=mode, shape=len(before) + 4096)
        with pytest.raises(PermissionError, match="open for writing"):
            mmarray.memmap(f, mode=mode, shape=len(before) + 4096)
    assert data_file.read_bytes() == before


@pytest.mark.parametrize("mode", ["rw", "w", "a", "", None, "R", [], 3])
def test_bad_mode_is_value_error_naming_it(data_file, mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        mmarray.open(data_file, mode=mode)


def test_negative_offset(data_file):
    with pytest.raises(ValueError, match="offset must be >= 0, got -1"):
        mmarray.open(data_file, mode="r", offset=-1)


def test_offset_not_an_integer(data_file):
    with pytest.raises(TypeError):
        mmarray.open(data_file, mode="r", offset=1.5)


def test_shape_past_end_of_file_in_r_mode(data_file):
    with pytest.raises(ValueError, match="past the end"):
        mmarray.open(data_file, dtype=np.float64, mode="r", shape=100000)
    with pytest.raises(ValueError, match="past the end"):
        mmarray.open(data_file, mode="c", offset=65536 + 13, shape=1)


def test_offset_past_end_with_shape_none(data_file):
    with pytest.raises(ValueError, match="nothing to map"):
        mmarray.open(data_file, mode="r", offset=10**6)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_offset_at_the_end_with_shape_none_is_an_empty_array_as_numpy_memmap(data_file, mode):
    # It was "nothing to map"; numpy.memmap infers shape (0,) there (an empty file stays an
    # error in both).
    size = os.path.getsize(data_file)
    expected = np.memmap(data_file, dtype=np.float64, mode=mode, offset=size)
    with mmarray.open(data_file, dtype=np.float64, mode=mode, offset=size) as m:
        assert m.shape == expected.shape == (0,) and m.array.dtype == np.float64
    with open(data_file, "rb") as f, mmarray.open(f, mode="r", offset=size) as m:
        assert m.shape == (0,)
    assert os.path.getsize(data_file) == size
    del expected


def test_shape_overflowing_64_bits(data_file):
    with pytest.raises(ValueError, match="overflows 64 bits"):
        mmarray.open(data_file, dtype=np.float64, mode="r", shape=(2**40, 2**30))
    with pytest.raises(ValueError, match="overflows 64 bits"):
        mmarray.open(data_file, mode="r+", offset=2**63 - 10, shape=100)


def test_numpy_integer_shape_is_a_length(data_file):
    with mmarray.open(data_file, mode="r", shape=np.int64(3)) as m:
        assert m.shape == (3,)
    with mmarray.open(data_file, mode="r", shape=(np.int32(2), np.uint8(3))) as m:
        assert m.shape == (2, 3)


def test_dimension_above_intp_max(data_file):
    with pytest.raises(ValueError, match="largest numpy allows"):
        mmarray.open(data_file, mode="r+", shape=(0, 2**70))


def test_negative_shape(data_file):
    with pytest.raises(ValueError, match="negative dimension"):
        mmarray.open(data_file, mode="r", shape=(2, -1))


def test_non_integer_shape(data_file):
    with pytest.raises(TypeError, match="shape must be"):
        mmarray.open(data_file, mode="r", shape=(2.5,))


def test_object_dtype_is_type_error(data_file):
    with pytest.raises(TypeError, match="Python objects"):
        mmarray.open(data_file, dtype=object, mode="r")
    with pytest.raises(TypeError, match="Python objects"):
        mmarray.open(data_file, dtype=[("a", "f8"), ("o", "O")], mode="r")


def test_unsized_dtype_without_a_shape_is_value_error(data_file):
    # numpy.memmap raises ZeroDivisionError; with a shape both give an array of no bytes
    # (tests/test_zero_itemsize_dtypes.py)
    with pytest.raises(ValueError, match="itemsize 0.*give a shape"):
        mmarray.open(data_file, dtype="S", mode="r")


def test_bad_order(data_file):
    with pytest.raises(ValueError, match=r"order must be 'C' or 'F' .*got 'X'"):
        mmarray.open(data_file, mode="r", shape=(2, 2), order="X")


@pytest.mark.parametrize("order", [None, "A", "K", "k"])
def test_open_takes_the_orders_numpy_memmap_takes_as_c(data_file, order):
    with mmarray.open(data_file, dtype=np.int32, mode="r", shape=(2, 4), order=order) as m:
        assert m.order == "C" and m.array.flags.c_contiguous


@pytest.mark.parametrize("order", [None, "a", "k", "A", "K"])
def test_memmap_takes_the_orders_numpy_memmap_takes_as_c(data_file, order):
    # order=None raised ValueError in the drop-in; numpy's ndarray reads it as 'C'.
    expected = np.memmap(data_file, dtype=np.int32, mode="r", shape=(2, 4), order=order)
    got = mmarray.memmap(data_file, dtype=np.int32, mode="r", shape=(2, 4), order=order)
    assert got.flags.c_contiguous and expected.flags.c_contiguous
    np.testing.assert_array_equal(got, expected)
    del got, expected


def test_empty_file_with_shape_none(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="nothing to map"):
        mmarray.open(path, mode="r")


def test_w_plus_without_shape(tmp_path):
    with pytest.raises(ValueError, match="shape must be given"):
        mmarray.open(tmp_path / "x", mode="w+")
    assert not (tmp_path / "x").exists()


def test_bad_file_argument():
    with pytest.raises(TypeError, match="file must be a path"):
        mmarray.open(3.5, mode="r")


def test_failed_w_plus_leaves_no_file(tmp_path):
    """A w+ that fails in the OS (here: a size the filesystem refuses) removes what it made."""
    path = tmp_path / "huge.bin"
    with pytest.raises(OSError):
        mmarray.open(path, mode="w+", shape=2**62)
    assert not path.exists()


def test_failed_w_plus_in_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmarray.open(tmp_path / "no" / "such" / "dir.bin", mode="w+", shape=10)


def test_bad_advice_rejected_before_mapping(tmp_path):
    path = tmp_path / "adv.bin"
    with pytest.raises(ValueError, match="advice must be one of"):
        mmarray.open(path, mode="w+", shape=10, advise="fast")
    assert not path.exists()


# -- resources and threads -----------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_live_mapping_holds_no_file_descriptor(data_file):
    before = len(os.listdir("/proc/self/fd"))
    maps = [mmarray.open(data_file, mode="r") for _ in range(50)]
    arrays = [m.array for m in maps]
    assert len(os.listdir("/proc/self/fd")) == before
    del arrays
    for m in maps:
        m.close()


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_NOFILE is POSIX")
def test_20000_mappings_under_rlimit_nofile_256(tmp_path):
    directory = tmp_path / "many"
    directory.mkdir()
    proc = run_python(f"""
        import os, resource, mmarray
        d = {str(directory)!r}
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        maps = []
        for i in range(20000):
            p = os.path.join(d, f"{{i}}.bin")
            m = mmarray.open(p, dtype="uint32", mode="w+", shape=4)
            m.array[0] = i
            maps.append(m)
        assert len(maps) == 20000
        assert all(m.array[0] == i for i, m in enumerate(maps))
        for m in maps:
            m.close()
        print("ok", len(os.listdir("/proc/self/fd")))
    """, timeout=600)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("ok")


def test_threads_racing_close_flush_and_array_never_crash(tmp_path):
    path = tmp_path / "race.bin"
    np.zeros(1 << 16, dtype=np.float64).tofile(path)
    proc = run_python(f"""
        import threading, random, mmarray, numpy as np
        path = {str(path)!r}
        errors = []
        def worker(shared, seed):
            rnd = random.Random(seed)
            for _ in range(3000):
                m = rnd.choice(shared)
                op = rnd.randrange(5)
                try:
                    if op == 0:
                        a = m.array; a[rnd.randrange(a.size)] += 1; del a
                    elif op == 1:
                        m.close()
                    elif op == 2:
                        m.flush(sync=False)
                    elif op == 3:
                        mv = memoryview(m); mv.release()
                    else:
                        m.resident(); m.advise("willneed")
                except ValueError as e:
                    if "closed" not in str(e): errors.append(e)
                except BaseException as e:
                    errors.append(e)
        for round in range(20):
            shared = [mmarray.open(path, dtype="float64", mode="r+") for _ in range(4)]
            keep = [m.array for m in shared[:2]]
            ts = [threading.Thread(target=worker, args=(shared, round * 10 + k)) for k in range(4)]
            for t in ts: t.start()
            for t in ts: t.join()
            for a in keep: a[:] += 0
            del keep, a
            for m in shared:
                m.close()
                assert m.exports == 0
        assert not errors, errors[:3]
        print("ok")
    """, timeout=600)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_close_from_other_thread_while_views_in_use(tmp_path):
    path = tmp_path / "t.bin"
    np.ones(1 << 20, dtype=np.float64).tofile(path)
    m = mmarray.open(path, dtype=np.float64, mode="r")
    a = m.array
    totals = []

    def reader(view):
        for _ in range(20):
            totals.append(float(view.sum()))

    t = threading.Thread(target=reader, args=(a,))
    t.start()
    m.close()
    t.join()
    assert totals == [float(1 << 20)] * 20
    del a
    assert m.exports == 0


@needs_proc_maps
def test_dealloc_of_unclosed_mapping_unmaps(data_file):
    m = mmarray.open(data_file, mode="r")
    del m
    gc.collect()
    assert mapped_regions(data_file) == []


@needs_proc_maps
def test_mapping_size_is_the_requested_range(tmp_path):
    path = tmp_path / "r.bin"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    with mmarray.open(path, mode="r", offset=(1 << 29) + 5, shape=10000) as m:
        # One page for the unaligned start, then 10000 bytes: three 4 KiB pages, not 1 GiB.
        assert mapped_bytes(path) <= 10000 + 2 * mmarray._engine.PAGE_SIZE
        del m


def test_hand_made_engine_objects_never_crash():
    """Objects built around the constructors (``__new__``) must fail cleanly, not segfault."""
    proc = run_python("""
        import mmarray
        from mmarray import Mapping
        from mmarray._engine import Region, _ArrayExport, _PopulateAhead
        bare = Mapping.__new__(Mapping)
        region = Region.__new__(Region)
        calls = [lambda: Mapping(), lambda: Region(), lambda: _ArrayExport(),
                 lambda: region.array, lambda: memoryview(region), lambda: region._set_shape((1,)),
                 lambda: region._flush_bytes(0, 1, True), lambda: region._advise_bytes(0, 1, 0),
                 lambda: region._resident_bytes(0, 1), lambda: _PopulateAhead(region, 0, 1, 1, 1),
                 lambda: memoryview(_ArrayExport.__new__(_ArrayExport)),
                 lambda: bare.array, lambda: memoryview(bare), lambda: bare.flush(),
                 lambda: bare.advise("random"), lambda: bare.resident(), lambda: bare.evict(),
                 lambda: mmarray.close(_ArrayExport.__new__(_ArrayExport)),
                 lambda: _PopulateAhead(None, 0, 1, 1, 1).run(),
                 lambda: _PopulateAhead(bare, 0, 1, 1, 1).run(),
                 lambda: _PopulateAhead.__new__(_PopulateAhead).run()]
        kinds = []
        for call in calls:
            try:
                call()
                kinds.append("ok")
            except (TypeError, ValueError, AttributeError) as e:
                kinds.append(type(e).__name__)
        bare.close()
        print(kinds)
    """)
    assert_clean_exit(proc)
    assert "ok" not in proc.stdout


def test_w_plus_on_a_file_mapped_in_this_process_is_refused(tmp_path):
    """Truncating a mapped file makes the old mapping's pages fault with SIGBUS (numpy.memmap
    crashes this way); mmarray refuses the truncation while any view of the file is live."""
    path = tmp_path / "busy.bin"
    np.arange(4096, dtype=np.int64).tofile(path)
    proc = run_python(f"""
        import mmarray, numpy as np
        path = {str(path)!r}
        a = mmarray.open(path, dtype="int64", mode="r").array
        for make in (lambda: mmarray.open(path, dtype="int64", mode="w+", shape=10),
                     lambda: mmarray.open(path, mode="w+", shape=0),
                     lambda: mmarray.memmap(path, dtype="int64", mode="w+", shape=10),
                     lambda: mmarray.open_memmap(path, mode="w+", dtype="int64", shape=(3,))):
            try:
                make()
                raise SystemExit("truncation was allowed")
            except ValueError as e:
                assert "live mapping" in str(e), e
        assert int(a[-1]) == 4095          # the old mapping is intact: no SIGBUS
        mmarray.close(a)
        del a
        m = mmarray.open(path, dtype="int64", mode="w+", shape=10)  # allowed once unmapped
        assert m.shape == (10,)
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_live_file_registry_counts_views_and_forgets_them(data_file):
    st = os.stat(data_file)
    live = mmarray._engine.live_views
    assert live(st.st_dev, st.st_ino) == 0
    m1 = mmarray.open(data_file, mode="r")
    m2 = mmarray.open(data_file, mode="r", offset=5, shape=3)
    assert live(st.st_dev, st.st_ino) == 2
    a = m1.array
    m1.close()
    assert live(st.st_dev, st.st_ino) == 2  # deferred: a still maps it
    del a
    assert live(st.st_dev, st.st_ino) == 1
    del m2
    gc.collect()
    assert live(st.st_dev, st.st_ino) == 0


def test_copying_an_array_export_is_refused_not_a_double_release():
    """A copy of the export object (Cython's automatic pickling) used to release an export it
    never acquired, unmapping the region under a live array: SIGSEGV."""
    proc = run_python("""
        import copy, pickle, tempfile, os, mmarray
        path = os.path.join(tempfile.mkdtemp(), "x.bin")
        m = mmarray.open(path, mode="w+", shape=1 << 20)
        a = m.array
        mm = mmarray.memmap(path, mode="r+")
        for export in (a.base, mm.base):
            for attempt in (copy.copy, copy.deepcopy, pickle.dumps):
                try:
                    attempt(export)
                    raise SystemExit(f"{attempt.__name__} of an export was allowed")
                except TypeError:
                    pass
        m.close(); mm.close()
        a[:] = 1; mm[:] = 2
        assert int(a[-1]) == 2
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_ndarray_over_the_mapping_buffer_survives_close():
    """np.ndarray(buffer=m) releases its buffer at once and keeps only a reference to m:
    closing must not unmap under it (it did: SIGSEGV)."""
    proc = run_python("""
        import gc, os, tempfile, numpy as np, mmarray
        path = os.path.join(tempfile.mkdtemp(), "x.bin")
        m = mmarray.open(path, mode="w+", shape=1 << 20)
        a = np.ndarray((1 << 20,), np.uint8, buffer=m)
        assert m.exports == 0
        m.close()
        a[:] = 3
        assert int(a[-1]) == 3
        with open("/proc/self/maps") as f:
            assert path in f.read()          # still mapped: a may use it
        del a, m
        gc.collect()
        with open("/proc/self/maps") as f:
            assert path not in f.read()      # unmapped with the last reference
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_w_plus_racing_readers_in_threads_never_truncates_under_them(tmp_path):
    """Check-then-truncate raced another thread's map-then-register: SIGBUS."""
    path = tmp_path / "race.bin"
    np.zeros(1 << 16, dtype=np.uint8).tofile(path)
    proc = run_python(f"""
        import threading, time, mmarray
        path = {str(path)!r}
        N = 1 << 16
        stop = time.monotonic() + 4
        refused = [0]
        def writer():
            while time.monotonic() < stop:
                try:
                    mmarray.open(path, mode="w+", shape=N).close()
                except ValueError:
                    refused[0] += 1
        def reader():
            while time.monotonic() < stop:
                try:
                    m = mmarray.open(path, mode="r", shape=N)
                except ValueError:  # the file was briefly shorter: nothing mapped
                    continue
                a = m.array
                a[-1]; a[0]
                del a
                m.close()
        ts = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
        for t in ts: t.start()
        for t in ts: t.join()
        print("ok", refused[0])
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("ok")


# -- buffer protocol by the book -------------------------------------------------------------

class _PyBuffer(__import__("ctypes").Structure):
    import ctypes as _c
    _fields_ = [("buf", _c.c_void_p), ("obj", _c.c_void_p), ("len", _c.c_ssize_t),
                ("itemsize", _c.c_ssize_t), ("readonly", _c.c_int), ("ndim", _c.c_int),
                ("format", _c.c_char_p), ("shape", _c.POINTER(_c.c_ssize_t)),
                ("strides", _c.POINTER(_c.c_ssize_t)),
                ("suboffsets", _c.POINTER(_c.c_ssize_t)), ("internal", _c.c_void_p)]


def _get_buffer(obj, flags):
    import ctypes
    view = _PyBuffer()
    ctypes.pythonapi.PyObject_GetBuffer.argtypes = [ctypes.py_object, ctypes.c_void_p,
                                                    ctypes.c_int]
    ctypes.pythonapi.PyBuffer_Release.argtypes = [ctypes.c_void_p]
    ctypes.pythonapi.PyObject_GetBuffer(obj, ctypes.byref(view), flags)
    fields = dict(len=view.len, readonly=view.readonly, format=view.format,
                  shape=view.shape[0] if view.shape else None,
                  strides=view.strides[0] if view.strides else None)
    ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))
    return fields


@pytest.mark.parametrize("source", ["mapping", "export"])
def test_buffer_request_flags_are_honoured(tmp_path, source):
    """__getbuffer__ filled format, shape and strides whatever was asked (PyBUF_SIMPLE
    consumers must get NULL there, as PyBuffer_FillInfo gives)."""
    SIMPLE, WRITABLE, FORMAT, ND, STRIDES = 0, 0x1, 0x4, 0x8, 0x18
    m = mmarray.open(tmp_path / "b.bin", mode="w+", shape=64)
    a = m.array
    obj = m if source == "mapping" else a.base
    assert _get_buffer(obj, SIMPLE) == dict(len=64, readonly=0, format=None, shape=None,
                                            strides=None)
    assert _get_buffer(obj, FORMAT | WRITABLE)["format"] == b"B"
    assert _get_buffer(obj, ND)["shape"] == 64 and _get_buffer(obj, ND)["strides"] is None
    assert _get_buffer(obj, STRIDES)["strides"] == 1
    assert m.exports == 1  # every request above was released again
    del a, obj
    m.close()
    assert m.exports == 0
