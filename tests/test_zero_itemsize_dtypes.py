"""Dtypes of itemsize 0 ('S', 'V0', np.dtype([]), subarrays with a 0 dimension): numpy.memmap
maps them given a shape, and np.save / np.load store and read arrays of them. mmarray does
the same, mapping nothing (an array of no bytes), and refuses them without a shape, where no
file length can give one (numpy.memmap divides by the itemsize there)."""
import os
import pickle

import numpy as np
import pytest

import mmarray
from helpers import assert_clean_exit, mapped_regions, needs_proc_maps, run_python

ZERO_ITEMSIZE = ["S", "U", "V0", np.dtype([]), "(0,)i4", "(2,0)f8"]


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(16)))
    return str(path)


@pytest.mark.parametrize("dtype", ZERO_ITEMSIZE, ids=str)
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_a_zero_itemsize_dtype_with_a_shape_maps_as_numpy_memmap_does(data_file, dtype, mode):
    want = np.memmap(data_file, dtype=dtype, mode=mode, shape=3)
    with mmarray.open(data_file, dtype=dtype, mode=mode, shape=3) as m:
        got = m.array
        assert (type(got), got.shape, got.dtype) == (np.ndarray, want.shape, want.dtype)
        assert m.nbytes == 0 and got.nbytes == 0
        del got
    mm = mmarray.memmap(data_file, dtype=dtype, mode=mode, shape=3)
    assert (mm.shape, mm.dtype, mm.nbytes) == (want.shape, want.dtype, 0)
    mm.close()
    assert open(data_file, "rb").read() == bytes(range(16))  # untouched


@needs_proc_maps
def test_a_zero_itemsize_array_maps_nothing(data_file):
    with mmarray.open(data_file, dtype="V0", mode="r", shape=(4, 2)) as m:
        assert m.array.shape == (4, 2) and mapped_regions(data_file) == []


@pytest.mark.parametrize("dtype", ZERO_ITEMSIZE, ids=str)
def test_a_zero_itemsize_dtype_without_a_shape_is_a_value_error(data_file, dtype):
    with pytest.raises(ValueError, match="itemsize 0.*give a shape"):
        mmarray.open(data_file, dtype=dtype, mode="r")
    with pytest.raises(ValueError, match="itemsize 0.*give a shape"):
        mmarray.memmap(data_file, dtype=dtype, mode="r")
    with pytest.raises(ZeroDivisionError):  # numpy's own, for the record
        np.memmap(data_file, dtype=dtype, mode="r")


def test_the_fast_open_never_sizes_a_file_by_an_itemsize_of_0(tmp_path):
    """The engine's common-case open divides the file's length by the itemsize of a dtype
    it finds in the Python layer's table: a zero itemsize there would be a division by zero
    in C (SIGFPE). The table never holds one, and the engine refuses one put there."""
    path = str(tmp_path / "data.bin")
    with open(path, "wb") as f:
        f.write(bytes(64))
    proc = run_python(f"""
        import numpy as np, mmarray
        from mmarray import _api, _engine
        for dt in ("V0", "S", np.dtype([])):
            try:
                mmarray.open({path!r}, dtype=dt, mode="r")
            except ValueError:
                pass
            mmarray.open({path!r}, dtype=dt, mode="r", shape=2).close()
        assert all(d.itemsize for d in _api._dtype_cache.values()), _api._dtype_cache
        _api._dtype_cache["V0"] = np.dtype("V0")      # forced in
        assert _engine.open_to_end({path!r}, "V0", "r", 0, None, "C", False, None) is None
        try:
            mmarray.open({path!r}, dtype="V0", mode="r")
        except ValueError as exc:
            print("refused:", exc)
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("refused: "), proc.stdout


def test_shapes_are_bounded_as_numpy_bounds_them(data_file):
    # numpy bounds the itemsize times the nonzero dimensions: nothing for an itemsize of 0
    huge = (2**62, 2**62)
    with np.errstate(over="ignore"):  # numpy.memmap multiplies the dimensions in int64
        assert np.memmap(data_file, dtype="V0", mode="r", shape=huge).shape == huge
    with mmarray.open(data_file, dtype="V0", mode="r", shape=huge) as m:
        assert m.array.shape == huge
    with pytest.raises(ValueError):
        np.empty((0, 2**62, 4), "f8")
    with pytest.raises(ValueError, match="too big for numpy"):
        mmarray.open(data_file, dtype="f8", mode="r", shape=(0, 2**62, 4))


def test_append_never_grows_a_zero_itemsize_npy_past_what_numpy_reads(tmp_path):
    # rows of no bytes cost nothing: only the length bounds them, and a header numpy cannot
    # read back would leave the file unreadable
    path = str(tmp_path / "v.npy")
    mmarray.create_npy(path, "V0", (2**63 - 1,)).close()
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match=r"v\.npy' grown by 1 rows.*dimension"):
        mmarray.append_npy(path, np.zeros(1, "V0"))
    assert open(path, "rb").read() == before
    assert np.load(path, mmap_mode="r").shape == (2**63 - 1,)


def test_a_zero_itemsize_field_saves_and_refers_as_numpy_saves_it(tmp_path):
    rec = np.dtype([("a", "V0"), ("b", "f8")])
    field = np.zeros(3, rec)["a"]               # not contiguous: strides (8,)
    mmarray.save_npz(tmp_path / "f.npz", a=field)
    assert np.load(tmp_path / "f.npz")["a"].shape == (3,)
    with mmarray.open(str(tmp_path / "r.bin"), dtype=rec, mode="w+", shape=3) as m:
        for view in (m.array["a"], m.array["a"][::-1]):
            back = pickle.loads(pickle.dumps(mmarray.ref(view)))
            assert np.asarray(back).shape == (3,) and np.asarray(back).dtype == np.dtype("V0")


@pytest.mark.parametrize("array", [np.zeros(3, np.dtype([])), np.zeros(4, "V0"),
                                   np.zeros(2, "S0"), np.zeros((3, 0), "i4")], ids=str)
def test_npy_and_npz_files_of_zero_itemsize_arrays_load_as_numpy_loads_them(tmp_path, array):
    npy, npz = str(tmp_path / "a.npy"), str(tmp_path / "a.npz")
    np.save(npy, array)
    want = np.load(npy, mmap_mode="r")
    for mode in ("r", "r+", "c"):
        with mmarray.load(npy, mode=mode) as m:
            assert (m.array.shape, m.array.dtype) == (want.shape, want.dtype)
    om = mmarray.open_memmap(npy, mode="r")
    assert (om.shape, om.dtype) == (want.shape, want.dtype)
    om.close()
    mmarray.save_npz(npz, a=array)  # written by mmarray, read by numpy, and back
    assert (np.load(npz)["a"].shape, np.load(npz)["a"].dtype) == (array.shape, array.dtype)
    with mmarray.load(npz) as z:
        with z["a"] as member:
            assert (member.array.shape, member.array.dtype) == (array.shape, array.dtype)


def test_a_zero_itemsize_npy_is_created_and_appended_to(tmp_path):
    path = str(tmp_path / "v.npy")
    mmarray.create_npy(path, "V0", (4,)).close()
    mmarray.append_npy(path, np.zeros(3, "V0"))
    got = np.load(path)
    assert (got.shape, got.dtype) == ((7,), np.dtype("V0"))
    assert os.path.getsize(path) == 128  # the header alone


def test_a_zero_itemsize_mapping_pickles_and_refers_by_reference(data_file):
    with mmarray.open(data_file, dtype="V0", mode="r+", shape=5) as m:
        back = pickle.loads(pickle.dumps(m))
        assert (back.array.shape, back.array.dtype) == ((5,), np.dtype("V0"))
        back.close()
        r = pickle.loads(pickle.dumps(mmarray.ref(m.array[1:3])))
        assert np.asarray(r).shape == (2,)
        assert [c.shape for c in m.chunks(2)] == [(2,), (2,), (1,)]


@pytest.mark.parametrize("dtype", ["S", "U", "V0"])
def test_an_empty_selection_keeps_the_itemsize_0_dtype(data_file, dtype):
    with mmarray.open(data_file, dtype=dtype, mode="r+", shape=3) as m:
        want = np.memmap(data_file, dtype=dtype, mode="r+", shape=3)[:0]
        for got in (m[:0], m.array[:0]):
            assert (got.shape, got.dtype, got.flags.writeable) == ((0,), want.dtype, True)
