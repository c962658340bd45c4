"""Sharing by reference in one process: Mapping pickles, mmarray.ref/ArrayRef, the lazy-array
face of a Mapping (what dask uses), to_dask with the threaded scheduler. Real processes,
joblib and a distributed cluster are in test_share_processes.py."""
import copy
import os
import pickle

import numpy as np
import pytest

import mmarray
from mmarray import _fileref
from helpers import assert_clean_exit, run_python


@pytest.fixture
def grid(tmp_path):
    """A 'w+' Mapping of a (40, 30) int64 grid holding 0..1199."""
    m = mmarray.open(tmp_path / "grid.i8", dtype="i8", mode="w+", shape=(40, 30))
    m.array[:] = np.arange(1200).reshape(40, 30)
    yield m
    m.close()


# -- Mapping pickles by reference --------------------------------------------------------------

@pytest.mark.parametrize("mode, expected", [("r", "r"), ("r+", "r+"), ("w+", "r+")])
def test_unpickled_mapping_maps_the_same_range_and_never_resets(tmp_path, mode, expected):
    path = tmp_path / "a.f4"
    with mmarray.open(path, dtype="f4", mode="w+", shape=(8, 5), offset=12) as w:
        w.array[:] = np.arange(40).reshape(8, 5)
    m = mmarray.open(path, dtype="f4", mode=mode, shape=(8, 5), offset=12, order="F") \
        if mode != "w+" else mmarray.open(path, dtype="f4", mode="r+", shape=(8, 5), offset=12)
    if mode == "w+":  # a 'w+' mapping: reset the file, then write known data again
        m.close()
        m = mmarray.open(path, dtype="f4", mode="w+", shape=(8, 5), offset=12)
        m.array[:] = np.arange(40).reshape(8, 5)
    before = path.read_bytes()
    other = pickle.loads(pickle.dumps(m))
    assert type(other) is mmarray.Mapping and other is not m
    assert (other.filename, other.offset, other.dtype, other.shape, other.order, other.mode) \
        == (m.filename, 12, m.dtype, (8, 5), m.order, expected)
    assert np.array_equal(other.array, m.array)
    assert path.read_bytes() == before  # nothing truncated, nothing grown
    other.close()
    m.close()


def test_pickled_mapping_is_small_whatever_the_size(tmp_path):
    path = tmp_path / "big.f4"
    with open(path, "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB of zeros, no blocks
    with mmarray.open(path, dtype="f4", mode="r") as m:
        payload = pickle.dumps(m, protocol=pickle.HIGHEST_PROTOCOL)
        assert len(payload) < 1024
        with pickle.loads(payload) as other:
            assert other.shape == (1 << 28,)


def test_write_through_an_unpickled_mapping_shows_in_the_original(grid):
    other = pickle.loads(pickle.dumps(grid))
    other[3, 4] = -7
    assert grid.array[3, 4] == -7
    other.close()


def test_copy_of_a_mapping_is_another_mapping_of_the_same_bytes(grid):
    other = copy.copy(grid)
    assert other is not grid and np.array_equal(other.array, grid.array)
    other.close()


def test_pickling_a_copy_on_write_mapping_says_to_pickle_a_copy(tmp_path, grid):
    with mmarray.open(grid.filename, dtype="i8", mode="c", shape=(40, 30)) as c:
        with pytest.raises(TypeError, match=r"m\.array\.copy\(\)"):
            pickle.dumps(c)


def test_pickling_a_closed_mapping_is_a_value_error(grid):
    grid.close()
    with pytest.raises(ValueError, match="closed"):
        pickle.dumps(grid)


def test_pickling_an_r_plus_npz_member_is_refused(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, x=np.arange(10))
    with mmarray.load(path, mode="r+") as archive:
        member = archive["x"]
        with pytest.raises(TypeError, match="CRC"):
            pickle.dumps(member)
        with pytest.raises(TypeError, match="CRC"):
            mmarray.ref(member.array)
    with mmarray.load(path, mode="r") as archive:  # read-only members share fine
        member = archive["x"]
        assert pickle.loads(pickle.dumps(member)).array.tolist() == list(range(10))


def test_unpickling_a_mapping_of_a_replaced_file_raises_naming_it(tmp_path, grid):
    payload = pickle.dumps(grid)
    path = grid.filename
    grid.close()
    os.replace(_copy_of(path, tmp_path / "copy.i8"), path)  # same bytes, another inode
    with pytest.raises(ValueError, match="no longer the file that was pickled") as info:
        pickle.loads(payload)
    assert repr(path) in str(info.value)


def test_unpickling_a_mapping_of_a_truncated_file_raises_and_grows_nothing(grid):
    payload = pickle.dumps(grid)
    path = grid.filename
    grid.close()
    os.truncate(path, 100)
    with pytest.raises(ValueError) as info:
        pickle.loads(payload)
    assert repr(path) in str(info.value)
    assert os.path.getsize(path) == 100


def test_unpickling_a_mapping_of_a_removed_file_creates_nothing(grid):
    payload = pickle.dumps(grid)
    path = grid.filename
    grid.close()
    os.remove(path)
    with pytest.raises(FileNotFoundError):
        pickle.loads(payload)
    assert not os.path.exists(path)


def test_identity_is_not_compared_across_hosts(grid, monkeypatch):
    """Device and inode numbers mean nothing on another host: only the size is checked."""
    payload = pickle.dumps(grid)
    monkeypatch.setattr(_fileref, "_host", "elsewhere/another-boot")
    with pickle.loads(payload) as other:  # same file, but "another host": no identity check
        assert other.shape == grid.shape


# -- the lazy-array face of a Mapping ----------------------------------------------------------

def test_mapping_indexes_like_its_array(grid):
    a = grid.array
    for key in (5, -1, (3, 4), np.s_[2:9:3], np.s_[::-1, 3:], np.s_[..., 2], np.s_[None, 1],
                [1, 5, 2], (np.arange(3), 2), a > 1000):
        assert np.array_equal(grid[key], a[key]), key
    assert grid.ndim == 2 and len(grid) == 40 and grid.shape == (40, 30)
    assert not hasattr(grid, "copy")  # dask's from_array would copy the whole file


def test_basic_indexing_of_a_mapping_returns_views_over_the_mapped_pages(grid):
    view = grid[2:4]
    assert mmarray.mapping_of(view) is grid and np.shares_memory(view, grid.array)
    assert mmarray.mapping_of(grid[[1, 2]]) is None  # fancy indexing copies, as numpy


def test_empty_selection_of_a_mapping_keeps_no_export(grid):
    empty = grid[:0, :0]
    assert empty.shape == (0, 0) and grid.exports == 0
    grid.close(strict=True)


def test_setitem_writes_to_the_file(grid):
    grid[1] = 9
    grid[[0, 2], 0] = -1
    grid[grid.array > 1190] = 0
    grid.flush()
    data = np.fromfile(grid.filename, dtype="i8").reshape(40, 30)
    assert (data[1] == 9).all() and data[0, 0] == data[2, 0] == -1 and data.max() == 1190


def test_setitem_of_a_read_only_mapping_raises(grid):
    with mmarray.open(grid.filename, dtype="i8", mode="r", shape=(40, 30)) as r:
        with pytest.raises(ValueError, match="read-only"):
            r[0] = 1


def test_len_of_a_0d_mapping_raises_but_it_is_true(tmp_path):
    with mmarray.open(tmp_path / "s.f8", dtype="f8", mode="w+", shape=()) as m:
        with pytest.raises(TypeError, match="unsized"):
            len(m)
        assert bool(m) is True
        m[()] = 2.5
        assert m[()] == 2.5


def test_asarray_of_a_mapping_is_its_typed_array(tmp_path):
    m = mmarray.open(tmp_path / "t.f8", dtype="f8", mode="w+", shape=(3, 4), order="F")
    m.array[:] = np.arange(12).reshape(3, 4)
    a = np.asarray(m)
    assert a.dtype == np.float64 and a.shape == (3, 4) and a.flags.f_contiguous
    assert a.tolist() == m.array.tolist() and mmarray.mapping_of(a) is m
    assert np.asarray(m, dtype="i4").dtype == np.int32
    with memoryview(m) as mv:
        assert (mv.format, mv.shape) == ("d", (3, 4))
    del a
    m.close(strict=True)  # the typed buffer's export went with its last user


def test_asarray_of_a_datetime_mapping_goes_through_array(tmp_path):
    """The buffer protocol has no datetime format: numpy falls back to __array__."""
    with mmarray.open(tmp_path / "d.M8", dtype="M8[s]", mode="w+", shape=3) as m:
        assert np.asarray(m).dtype == np.dtype("M8[s]")


def test_raw_buffer_consumers_still_get_bytes(grid):
    assert np.frombuffer(grid, np.uint8).size == 40 * 30 * 8
    assert bytes(memoryview(grid.array[0, :2])) == np.arange(2, dtype="i8").tobytes()


def test_dask_token_is_deterministic_and_names_the_region(grid):
    from dask.base import tokenize

    with mmarray.open(grid.filename, dtype="i8", mode="r+", shape=(40, 30)) as same, \
            mmarray.open(grid.filename, dtype="i8", mode="r+", shape=(39, 30)) as shorter:
        assert tokenize(grid) == tokenize(grid)
        assert tokenize(same) != tokenize(grid)  # another mode ('r+' vs 'w+')
        assert tokenize(shorter) != tokenize(same)


# -- mmarray.ref and ArrayRef ---------------------------------------------------------------

VIEWS = {
    "whole": lambda a: a,
    "rows": lambda a: a[5:17],
    "steps": lambda a: a[::3, 1::4],
    "reversed": lambda a: a[::-2, ::-3],
    "transpose": lambda a: a.T,
    "reshape": lambda a: a.reshape(60, 20)[7:9],
    "mixed": lambda a: a[::2, 3:],
    "column": lambda a: a[:, 4],
    "element": lambda a: a[7:8, 9],
    "empty": lambda a: a[3:3],
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_ref_rebuilds_an_equal_view_from_just_its_bytes(grid, name):
    view = VIEWS[name](grid.array)
    r = pickle.loads(pickle.dumps(mmarray.ref(view)))
    assert isinstance(r, mmarray.ArrayRef)
    got = np.asarray(r)
    assert got.shape == view.shape and got.dtype == view.dtype
    assert np.array_equal(got, view)
    if view.size:
        lo = sum(min(0, (n - 1) * s) for n, s in zip(view.shape, view.strides))
        span = sum(abs((n - 1) * s) for n, s in zip(view.shape, view.strides)) + view.itemsize
        assert mmarray.mapping_of(got).nbytes == span  # only the view's bytes are mapped
        assert r.offset == view.__array_interface__["data"][0] + lo - \
            grid.array.__array_interface__["data"][0]
        assert got.flags.writeable


def test_ref_of_a_read_only_mapping_gives_read_only_arrays(grid):
    with mmarray.open(grid.filename, dtype="i8", mode="r", shape=(40, 30)) as r:
        ref = mmarray.ref(r.array[2:5])
    assert not ref.writable and not np.asarray(ref).flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        ref[0] = 1


def test_writes_through_a_ref_reach_the_file(grid):
    r = pickle.loads(pickle.dumps(mmarray.ref(grid.array[10:20, ::2])))
    r[0] = -5                      # maps just that row of the view
    r[[1, 2], 0] = -6              # fancy: through the whole view
    assert (grid.array[10, ::2] == -5).all()
    assert grid.array[11, 0] == grid.array[12, 0] == -6


def test_ref_getitem_maps_only_the_selected_bytes(grid):
    r = mmarray.ref(grid.array)
    part = r[20:22, 5:7]
    assert part.tolist() == grid.array[20:22, 5:7].tolist()
    assert mmarray.mapping_of(part).nbytes == 30 * 8 + 2 * 8  # row 20 col 5 .. row 21 col 6
    assert r[3, 4] == grid.array[3, 4]
    assert r[:0].shape == (0, 30)


def test_ref_payload_is_small(tmp_path):
    path = tmp_path / "big.f4"
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    with mmarray.open(path, dtype="f4", mode="r", shape=(1 << 14, 1 << 14)) as m:
        assert len(pickle.dumps(mmarray.ref(m.array[::2, 100:]))) < 1024


def test_ref_of_an_in_memory_array_is_a_type_error():
    with pytest.raises(TypeError, match="not backed"):
        mmarray.ref(np.arange(4))
    with pytest.raises(TypeError, match="numpy.ndarray"):
        mmarray.ref([1, 2, 3])


def test_ref_of_a_copy_on_write_mapping_is_a_type_error(grid):
    with mmarray.open(grid.filename, dtype="i8", mode="c", shape=(40, 30)) as c:
        with pytest.raises(TypeError, match="copy-on-write"):
            mmarray.ref(c.array[1:])


def test_ref_of_a_view_reaching_outside_its_mapping_is_refused(grid):
    from numpy.lib.stride_tricks import as_strided

    outside = as_strided(grid.array, shape=(41, 30), strides=grid.array.strides)
    with pytest.raises(ValueError, match="outside its mapping"):
        mmarray.ref(outside)


def test_ref_of_a_replaced_file_raises_on_use_not_on_unpickle(tmp_path, grid):
    r = pickle.loads(pickle.dumps(mmarray.ref(grid.array[1:3])))
    path = grid.filename
    grid.close()
    os.replace(_copy_of(path, tmp_path / "copy.i8"), path)
    with pytest.raises(ValueError, match="no longer the file"):
        np.asarray(r)


def test_arrayref_cannot_be_made_directly():
    with pytest.raises(TypeError, match="mmarray.ref"):
        mmarray.ArrayRef()


def test_structured_field_of_a_ref(tmp_path):
    dt = np.dtype([("a", "i4"), ("b", "f8")])
    with mmarray.open(tmp_path / "s.rec", dtype=dt, mode="w+", shape=10) as m:
        m.array["a"] = np.arange(10)
        m.array["b"] = np.arange(10) / 2
        r = mmarray.ref(m.array)
        assert r["b"][3] == 1.5 and r[4]["a"] == 4
        assert np.array_equal(np.asarray(mmarray.ref(m.array["a"][::2])), np.arange(0, 10, 2))


# -- dask, threaded scheduler -------------------------------------------------------------------

def test_from_array_of_a_mapping_keeps_the_data_out_of_the_graph(tmp_path):
    da = pytest.importorskip("dask.array")
    path = tmp_path / "big.f4"
    with open(path, "wb") as f:
        f.truncate(512 << 20)
    with mmarray.open(path, dtype="f4", mode="r+", shape=(1 << 14, 1 << 13)) as m:
        m[100, 7] = 3.0
        x = da.from_array(m, chunks=(2048, 8192))
        assert len(pickle.dumps(dict(x.__dask_graph__()))) < (1 << 20)
        assert float(x.sum().compute(scheduler="threads")) == 3.0


def test_from_array_of_a_mapping_with_default_chunks_chunks_it_as_an_ndarray(tmp_path):
    # dask takes x.chunks for a chunk layout (h5py, zarr) and Mapping.chunks is a method:
    # from_array(m) raised TypeError inside dask's chunks="auto" before Mapping.shards.
    da = pytest.importorskip("dask.array")
    path = tmp_path / "big.f8"
    with open(path, "wb") as f:
        f.truncate(1 << 30)                                  # sparse: 1 GiB of zeros
    with mmarray.open(path, dtype="f8", mode="r+", shape=(1 << 24, 8)) as m:
        m[5, 3] = 2.5
        like = da.core.normalize_chunks("auto", m.shape, dtype=m.dtype)  # an ndarray's
        for x in (da.from_array(m), da.from_array(m, chunks="auto")):
            assert x.chunks == like and x.numblocks[0] > 1
            assert float(x[:10].sum().compute(scheduler="threads")) == 2.5
        assert m.shards == () and callable(m.chunks)         # the method stays a method
        with pytest.raises(TypeError):
            iter(m.chunks)                                   # a forgotten call stays loud


def test_store_into_a_mapping_writes_the_file(tmp_path):
    da = pytest.importorskip("dask.array")
    with mmarray.open(tmp_path / "out.i8", dtype="i8", mode="w+", shape=(100, 10)) as out:
        da.store(da.arange(1000, chunks=100).reshape(100, 10), out, scheduler="threads")
    assert np.fromfile(tmp_path / "out.i8", "i8").tolist() == list(range(1000))


@pytest.mark.parametrize("kind", ["raw", "npy", "npz"])
def test_to_dask_maps_each_chunk_alone(tmp_path, kind):
    pytest.importorskip("dask.array")
    data = np.arange(6000, dtype="f8").reshape(600, 10)
    if kind == "raw":
        path = tmp_path / "a.f8"
        data.tofile(path)
        x = mmarray.to_dask(path, chunks=(100, 10), dtype="f8", shape=(600, 10))
    elif kind == "npy":
        path = tmp_path / "a.npy"
        np.save(path, data)
        x = mmarray.to_dask(path, chunks=(100, 10))
    else:
        path = tmp_path / "a.npz"
        np.savez(path, other=np.zeros(3), data=data)
        x = mmarray.to_dask(path, chunks=(100, 10), key="data")
    assert x.numblocks == (6, 1)
    assert np.array_equal(x.compute(scheduler="threads"), data)
    assert len(pickle.dumps(dict(x.__dask_graph__()))) < 8192


def test_to_dask_refuses_what_it_cannot_share(tmp_path):
    pytest.importorskip("dask.array")
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros(3), b=np.ones(3))
    with pytest.raises(ValueError, match="key="):
        mmarray.to_dask(path)
    with pytest.raises(KeyError):
        mmarray.to_dask(path, key="nope")
    np.savez_compressed(tmp_path / "c.npz", a=np.zeros(3))
    with pytest.raises(TypeError, match="compressed"):
        mmarray.to_dask(tmp_path / "c.npz", compressed="ignore")
    with pytest.raises(ValueError, match="w\\+"):
        mmarray.to_dask(tmp_path / "raw", dtype="f8", shape=3, mode="w+")
    assert not (tmp_path / "raw").exists()


def _copy_of(path, where):
    with open(path, "rb") as src, open(where, "wb") as dst:
        dst.write(src.read())
    return where


def test_ref_element_far_from_the_start_is_read_from_the_file_not_the_probe(tmp_path):
    """ref[i, j] once indexed a layout probe (a one-element buffer with the view's strides)
    with the full key: numpy read the 'element' from wherever the strides pointed, 1 GiB past
    the buffer here."""
    proc = run_python(f"""
        import mmarray
        path = {str(tmp_path / "big.f4")!r}
        with open(path, "wb") as f:
            f.truncate(1 << 30)
        with mmarray.open(path, dtype="f4", mode="r+", shape=(1 << 14, 1 << 14)) as m:
            m[-1, -1] = 2.5
            r = mmarray.ref(m.array)
        assert r[-1, -1] == 2.5 and r[(1 << 14) - 1][-1] == 2.5
        r[-1, -2] = 1.5
        assert r.array[-1, -2] == 1.5
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_setitem_of_a_field_writes_and_schedules_only_that_field(tmp_path):
    dt = np.dtype([("a", "i4"), ("b", "f8")])
    with mmarray.open(tmp_path / "s.rec", dtype=dt, mode="w+", shape=6) as m:
        m["a"] = 5
        m[2] = (1, 2.5)
        r = mmarray.ref(m.array)
        r["b"] = 0.5
        r[3] = (9, 9.5)
        assert m.array.tolist() == [(5, 0.5), (5, 0.5), (1, 0.5), (9, 9.5), (5, 0.5),
                                    (5, 0.5)]
        assert isinstance(r[3], np.void) and r[3]["a"] == 9


# -- found by review --------------------------------------------------------------------------

def test_arrayref_fields_from_a_hostile_pickle_are_refused_before_any_map(tmp_path):
    """An ArrayRef rebuilt with an object dtype read file bytes as PyObject pointers:
    SIGSEGV."""
    path = tmp_path / "c.bin"
    path.write_bytes(b"\x41" * 64)
    proc = run_python(f"""
        import numpy as np
        from mmarray import _fileref, _share
        bad = [("object dtype", (np.dtype(object), (2,), (8,))),
               ("strides of another length", (np.dtype("i8"), (2,), (8, 8))),
               ("a str dtype", ("i8", (2,), (8,)))]
        for what, (dtype, shape, strides) in bad:
            try:
                _share._rebuild({str(path)!r}, None, _fileref.host_id(), 0, 16, 0, dtype,
                                shape, strides, False).array
                raise SystemExit(what + " was accepted")
            except TypeError:
                pass
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_memmap_of_a_relative_bytes_path_pickles_its_absolute_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mm = mmarray.memmap(b"rel.bin", mode="w+", shape=8)
    assert mmarray.mapping_of(mm).filename == str(tmp_path / "rel.bin")
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    (other_dir / "rel.bin").write_bytes(b"\0" * 8)
    monkeypatch.chdir(other_dir)  # a receiver elsewhere must still find the first file
    got = pickle.loads(pickle.dumps(mm))
    got[:] = 5
    assert mm.tolist() == [5] * 8 and (other_dir / "rel.bin").read_bytes() == b"\0" * 8


def test_fortran_order_mapping_buffer_is_its_arrays(tmp_path):
    with mmarray.open(tmp_path / "f.i4", dtype="i4", mode="w+", shape=(2, 3), order="F") as m:
        m.array[:] = np.arange(6).reshape(2, 3)
        with memoryview(m) as mv, memoryview(m.array) as expected:
            assert (mv.shape, mv.strides, mv.format) == (expected.shape, expected.strides,
                                                          expected.format)
            assert bytes(mv) == bytes(expected)  # logical order, as numpy gives it
        import hashlib
        assert hashlib.md5(m).digest() == hashlib.md5(m.array.tobytes(order="F")).digest()


@pytest.mark.parametrize("dtype", [
    "M8[s]", "m8[ns]", {"names": ["a"], "formats": ["i4"], "offsets": [0], "itemsize": 8},
    np.dtype([("a", "u1"), ("b", "f8")], align=True)])
def test_dtypes_without_an_exact_buffer_format_still_give_their_array(tmp_path, dtype):
    dt = np.dtype(dtype)
    with mmarray.open(tmp_path / "d.bin", dtype=dt, mode="w+", shape=4) as m:
        a = np.asarray(m)
        assert a.dtype == dt and a.shape == (4,) and mmarray.mapping_of(a) is m
        assert np.array(m).dtype == dt
        del a


def test_iterating_a_mapping_is_iterating_its_array(tmp_path):
    with mmarray.open(tmp_path / "i.i8", dtype="i8", mode="w+", shape=(3, 2)) as m:
        m.array[:] = np.arange(6).reshape(3, 2)
        assert [row.tolist() for row in m] == [[0, 1], [2, 3], [4, 5]]
    with mmarray.open(tmp_path / "z.i8", dtype="i8", mode="w+", shape=()) as z:
        with pytest.raises(TypeError, match="0-d"):
            list(z)


def test_empty_selections_keep_the_mappings_writability(grid):
    with mmarray.open(grid.filename, dtype="i8", mode="r", shape=(40, 30)) as r:
        assert not r[3:3].flags.writeable
        ref = mmarray.ref(r.array[3:3])
    assert not ref.array.flags.writeable and not ref[:0].flags.writeable
    assert grid[3:3].flags.writeable


def test_pickling_a_relative_name_is_refused(tmp_path, monkeypatch):
    from mmarray import _engine

    monkeypatch.chdir(tmp_path)
    m = mmarray._mapping.map_region(path="rel.bin", access=_engine.WRITE, length=8,
                                    flags=_engine.CREATE, dtype=np.dtype("u1"), shape=(8,),
                                    mode="w+", filename="rel.bin")
    with pytest.raises(TypeError, match="not absolute"):
        pickle.dumps(m)
    m.close()


def test_ref_of_an_array_made_before_a_resize_says_so(tmp_path):
    """It was refused as an array reaching "outside its mapping", with no word of the
    resize (helper-59)."""
    m = mmarray.open(tmp_path / "r.bin", mode="w+", shape=1 << 16)
    old = m.array[10:20]
    m.resize((1 << 20,))
    with pytest.raises(ValueError, match="made before a resize"):
        mmarray.ref(old)
    assert mmarray.ref(m.array[10:20]).shape == (10,)
    del old
    m.close()
