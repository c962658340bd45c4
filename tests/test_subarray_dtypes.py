"""Subarray dtypes such as ``'(2,)i4'``: numpy never makes an array of one. ``numpy.memmap``
and ``ndarray(shape, dtype)`` give the base dtype, with the subarray's dimensions after the
shape, and ``np.load(mmap_mode='r')`` reads a ``.npy`` header whose descr is a subarray the
same way (np.load without mmap_mode fails on it: it reads too many elements). Every
mmarray entry point reports (``Mapping.shape``/``dtype``) what its array is, and writes headers
numpy reads back as the same array."""

import pickle

import numpy as np
import pytest

import mmarray
from mmarray import _engine


@pytest.fixture
def raw(tmp_path):
    path = tmp_path / "a.i4"
    np.arange(16, dtype="<i4").tofile(path)
    return path


def craft_npy(path, descr, shape, fortran, data):
    """A version 1.0 .npy with this header, as numpy's writer lays it out."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, }}"
    text += " " * (63 - (10 + len(text)) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()
                     + data)
    return path


@pytest.mark.parametrize("dtype, shape, order", [
    ("(2,)i4", None, "C"), ("(2,)i4", (2, 4), "C"), ("(2,)i4", (2, 4), "F"),
    ("(2,2)<i4", (2, 2), "F"), (np.dtype(("(2,)i4", (2,))), (4,), "C"),
    (np.dtype(("(2,)i4", (2,))), (2, 2), "F")])
def test_open_reports_the_shape_and_dtype_of_numpy_memmap(raw, dtype, shape, order):
    # Mapping.shape was (8,) and Mapping.dtype ('<i4', (2,)) while its array was (8, 2) int32.
    expected = np.memmap(raw, dtype=dtype, mode="r", shape=shape, order=order)
    with mmarray.open(raw, dtype=dtype, mode="r", shape=shape, order=order) as m:
        a = m.array
        assert (m.shape, m.dtype) == (a.shape, a.dtype) == (expected.shape, expected.dtype)
        assert a.strides == expected.strides
        np.testing.assert_array_equal(a, expected)
        assert m.size == a.size and m.nbytes == a.nbytes and m.ndim == a.ndim
        del a
    del expected


def test_memmap_with_subarray_dtype_matches_numpy(raw):
    a = mmarray.memmap(raw, dtype="(2,)i4", mode="r")
    b = np.memmap(raw, dtype="(2,)i4", mode="r")
    assert (a.shape, a.dtype) == (b.shape, b.dtype) == ((8, 2), np.dtype("i4"))
    np.testing.assert_array_equal(a, b)
    del a, b


def test_subarray_dtype_past_64_dimensions_is_refused_before_mapping(raw):
    dtype = np.dtype(("i4", (1,) * 64))
    with pytest.raises(ValueError, match="dimensions"):  # numpy refuses too
        np.ndarray((1,), dtype=dtype, buffer=bytes(4))
    for shape in ((1,), None):
        with pytest.raises(ValueError, match="65 dimensions, more than 64"):
            mmarray.open(raw, dtype=dtype, mode="r", shape=shape)
    assert _engine.live_views(*_stat_key(raw)) == 0


def _stat_key(path):
    st = path.stat()
    return st.st_dev, st.st_ino


def test_w_plus_subarray_mapping_pickles_and_chunks_by_rows(tmp_path):
    with mmarray.open(tmp_path / "w.bin", dtype="(2,)i4", mode="w+", shape=3) as m:
        assert (m.shape, m.dtype) == ((3, 2), np.dtype("i4"))
        m.array[:] = [[1, 2], [3, 4], [5, 6]]
        m.flush()
        copy = pickle.loads(pickle.dumps(m))
        assert (copy.shape, copy.array.tolist()) == ((3, 2), [[1, 2], [3, 4], [5, 6]])
        copy.close()
        assert [c.shape for c in m.chunks(2)] == [(2, 2), (1, 2)]


@pytest.mark.parametrize("descr", [("<i4", (2,)), "(2,)<i4"])
@pytest.mark.parametrize("fortran", [False, True])
def test_load_reads_a_subarray_descr_as_np_load_mmap_does(tmp_path, descr, fortran):
    # np.load(mmap_mode='r') reads ('<i4', (2,)) as trailing axes; load refused it.
    path = craft_npy(tmp_path / "s.npy", descr, (3,), fortran,
                     np.arange(6, dtype="<i4").tobytes())
    expected = np.load(path, mmap_mode="r")
    with mmarray.load(path) as m:
        assert (m.shape, m.dtype) == (expected.shape, expected.dtype) == ((3, 2), np.dtype("i4"))
        np.testing.assert_array_equal(m.array, expected)
        assert m.order == ("F" if fortran else "C")
    del expected


def test_load_refuses_a_subarray_descr_past_64_dimensions_naming_the_file(tmp_path):
    path = craft_npy(tmp_path / "d.npy", ("<i4", (1,)), (1,) * 64, False, bytes(4))
    with pytest.raises(ValueError, match="d.npy.*65 dimensions"):
        mmarray.load(path)


def test_append_npy_to_a_subarray_descr_writes_numpys_own_header(tmp_path):
    # The grown header kept the descr ('<i4', (2,)) with the whole shape (5, 2): np.load then
    # read (5, 2, 2), past the end of the data.
    path = craft_npy(tmp_path / "s.npy", ("<i4", (2,)), (3,), False,
                     np.arange(6, dtype="<i4").tobytes())
    assert mmarray.append_npy(path, np.full((2, 2), 7, "<i4")) == 5
    got = np.load(path)
    assert got.shape == (5, 2) and got.dtype == np.dtype("<i4")
    assert got.tolist() == [[0, 1], [2, 3], [4, 5], [7, 7], [7, 7]]


def test_npy_resize_of_a_subarray_descr_writes_numpys_own_header(tmp_path):
    path = craft_npy(tmp_path / "s.npy", ("<i4", (2,)), (3,), False,
                     np.arange(6, dtype="<i4").tobytes())
    with mmarray.load(path, mode="r+") as m:
        m.resize(4)
        m.array[3] = [8, 9]
        m.flush()
    got = np.load(path)
    assert got.shape == (4, 2) and got.tolist()[3] == [8, 9]


def test_create_npy_with_nested_subarray_dtype_writes_the_base_descr(tmp_path):
    dtype = np.dtype(("(2,)<i2", (3,)))
    with mmarray.create_npy(tmp_path / "n.npy", dtype, 4) as m:
        assert (m.shape, m.dtype) == ((4, 3, 2), np.dtype("<i2"))
    got = np.load(tmp_path / "n.npy")
    assert (got.shape, got.dtype) == ((4, 3, 2), np.dtype("<i2"))


@pytest.mark.parametrize("args", [(None, ()), (np.dtype("i4"), None), ("i4", ()),
                                  (np.dtype("i4"), [1])])
def test_without_subarray_refuses_other_types(args):
    with pytest.raises(TypeError, match="incorrect type"):
        _engine.without_subarray(*args)
