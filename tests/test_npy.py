"""mmarray.load for .npy files, row ranges, and mmarray.create_npy."""
import io
import os
import pickle
import stat
import struct
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.lib import format as npformat

import mmarray
from mmarray import _engine, _npyformat
from _npy_helpers import GIB, npy_bytes, npy_header, write_sparse_npy
from helpers import mapped_bytes, mapped_regions, needs_proc_maps

# numpy's private reader and writer: the references for mmarray's header code, here only
try:
    from numpy.lib._format_impl import _read_array_header as np_read_array_header
    from numpy.lib._format_impl import _write_array_header as np_write_array_header
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.lib.format import _read_array_header as np_read_array_header
    from numpy.lib.format import _write_array_header as np_write_array_header

DTYPES = ["<f8", ">i4", "u1", "?", "<c16", "<U5", "S3", "<M8[s]", "<m8[ms]", "<f2",
          [("a", "<i2"), ("b", "<f8", (2,))], np.dtype({"names": ["x"], "formats": ["<i4"],
                                                        "offsets": [4], "itemsize": 12})]


def save(tmp_path, arr, name="a.npy", version=None):
    path = tmp_path / name
    path.write_bytes(npy_bytes(arr, version))
    return path


def sample(dtype, shape, order="C"):
    dt = np.dtype(dtype)
    raw = (np.arange(int(np.prod(shape)) * dt.itemsize) % 251).astype(np.uint8)
    return np.frombuffer(raw.tobytes(), dt).reshape(shape, order=order).copy(order=order)


def assert_same(a, b):
    """Same dtype, shape and values (bit for bit; padding bytes of structs excluded)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    if a.dtype.names:
        for name in a.dtype.names:
            assert a[name].tobytes() == b[name].tobytes(), name
    else:
        assert a.tobytes() == b.tobytes()


# -- reading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 4), (2, 0, 3), (2, 3, 4)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_load_gives_what_np_load_gives(tmp_path, dtype, shape, order):
    arr = sample(dtype, shape, order)
    path = save(tmp_path, arr)
    with mmarray.load(path) as m:
        a = m.array
        assert type(a) is np.ndarray
        assert_same(a, np.load(path))
        assert m.shape == a.shape and m.dtype == a.dtype
        expected_order = "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"
        assert m.order == expected_order
        assert m.offset == len(npy_bytes(arr)) - arr.nbytes
        assert m.filename == os.path.abspath(path)


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_load_reads_format_versions_1_2_and_3(tmp_path, version):
    dt = np.dtype([("\u00e9t\u00e9", "<i4"), ("b", "<f4")]) if version == (3, 0) else "<i8"
    arr = sample(dt, (5, 2))
    path = save(tmp_path, arr, version=version)
    assert path.read_bytes()[6:8] == bytes(version)
    with mmarray.load(path) as m:
        assert_same(m.array, np.load(path))


def test_load_reads_a_header_longer_than_the_first_read(tmp_path):
    dt = np.dtype([(f"field_{i:03d}", "<i2") for i in range(300)])
    arr = sample(dt, (3,))
    path = save(tmp_path, arr)
    assert len(path.read_bytes()) - arr.nbytes > _npyformat.FIRST_READ
    with mmarray.load(path, max_header_size=100000) as m:
        assert_same(m.array, np.load(path, max_header_size=100000))


def test_load_large_header_needs_max_header_size_like_np_load(tmp_path):
    dt = np.dtype([(f"field_{i:03d}", "<i2") for i in range(800)])
    path = save(tmp_path, sample(dt, (2,)))
    with pytest.raises(ValueError, match="max_header_size"):
        np.load(path)
    with pytest.raises(ValueError, match="max_header_size"):
        mmarray.load(path)
    with mmarray.load(path, max_header_size=10**6) as m:
        assert m.shape == (2,)


def test_load_accepts_path_bytes_and_pathlike(tmp_path):
    path = save(tmp_path, np.arange(3))
    for f in (str(path), os.fsencode(path), path):
        with mmarray.load(f) as m:
            assert m.array.tolist() == [0, 1, 2]


def test_load_mode_r_is_read_only(tmp_path):
    path = save(tmp_path, np.arange(4))
    with mmarray.load(path) as m:
        a = m.array
        assert not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            a[0] = 1
        del a


def test_load_mode_r_plus_writes_reach_the_file(tmp_path):
    path = save(tmp_path, np.arange(4))
    with mmarray.load(path, mode="r+") as m:
        m.array[1] = 42
        m.flush()
    assert np.load(path).tolist() == [0, 42, 2, 3]


def test_load_mode_c_writes_stay_in_memory(tmp_path):
    path = save(tmp_path, np.arange(4))
    with mmarray.load(path, mode="c") as m:
        a = m.array
        a[1] = 42
        assert a.tolist() == [0, 42, 2, 3]
        del a
    assert np.load(path).tolist() == [0, 1, 2, 3]


def test_load_accepts_numpys_long_mode_names(tmp_path):
    path = save(tmp_path, np.arange(4))
    for mode, short in (("readonly", "r"), ("readwrite", "r+"), ("copyonwrite", "c")):
        with mmarray.load(path, mode=mode) as m:
            assert m.mode == short


@pytest.mark.parametrize("mode", ["w+", "write"])
def test_load_refuses_mode_w_plus_with_a_clear_error(tmp_path, mode):
    path = save(tmp_path, np.arange(4))
    with pytest.raises(ValueError, match="'w\\+' would overwrite.*create_npy"):
        mmarray.load(path, mode=mode)
    assert np.load(path).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("mode", ["x", "rb", None, 1])
def test_load_refuses_unknown_modes_naming_them(tmp_path, mode):
    path = save(tmp_path, np.arange(4))
    with pytest.raises(ValueError, match="mode must be one of"):
        mmarray.load(path, mode=mode)


def test_load_r_plus_does_not_grow_a_truncated_file(tmp_path):
    path = save(tmp_path, np.arange(100))
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mmarray.load(path, mode="r+")
    assert path.stat().st_size == len(data) - 8


def test_load_leaves_no_descriptor_open(tmp_path):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd")
    path = save(tmp_path, np.arange(10))
    junk = tmp_path / "junk.npy"
    junk.write_bytes(b"junk")
    before = len(os.listdir("/proc/self/fd"))
    m = mmarray.load(path)
    assert len(os.listdir("/proc/self/fd")) == before
    with pytest.raises(ValueError):
        mmarray.load(junk)
    assert len(os.listdir("/proc/self/fd")) == before
    m.close()


def test_load_from_file_object_reads_at_its_position_and_moves_past_the_array(tmp_path):
    path = tmp_path / "two.npy"
    with open(path, "wb") as f:
        np.save(f, np.arange(3))
        np.save(f, np.arange(10, 15).reshape(5, 1))
        f.write(b"tail")
    with open(path, "rb") as f:
        first = mmarray.load(f)
        second = mmarray.load(f)
        assert f.read() == b"tail"
    assert first.array.tolist() == [0, 1, 2]
    assert second.array.ravel().tolist() == [10, 11, 12, 13, 14]
    assert first.filename is None
    first.close()
    second.close()


def test_load_from_file_object_with_rows_moves_past_the_whole_array(tmp_path):
    path = tmp_path / "two.npy"
    with open(path, "wb") as f:
        np.save(f, np.arange(10))
        np.save(f, np.arange(3))
    with open(path, "rb") as f:
        with mmarray.load(f, rows=slice(2, 4)) as m:
            assert m.array.tolist() == [2, 3]
        with mmarray.load(f) as m:
            assert m.array.tolist() == [0, 1, 2]


def test_load_refuses_objects_without_fileno(tmp_path):
    with pytest.raises(TypeError, match="fileno"):
        mmarray.load(io.BytesIO(npy_bytes(np.arange(3))))
    with pytest.raises(TypeError, match="got int"):
        mmarray.load(3)


def test_load_missing_file_and_directory_are_os_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmarray.load(tmp_path / "missing.npy")
    with pytest.raises(FileNotFoundError):
        mmarray.load("")
    with pytest.raises(IsADirectoryError):
        mmarray.load(tmp_path)


def test_array_outlives_close_of_its_mapping(tmp_path):
    path = save(tmp_path, np.arange(6.0))
    m = mmarray.load(path)
    a = m.array
    m.close()
    assert m.closed and m.exports == 1
    assert a.sum() == 15.0
    with pytest.raises(ValueError, match="closed"):
        m.array


def test_zero_size_array_maps_nothing(tmp_path):
    path = save(tmp_path, np.zeros((0, 5)))
    with mmarray.load(path) as m:
        assert m.array.shape == (0, 5)
        assert m.nbytes == 0


# -- the header parser: fast path against numpy's ---------------------------------------------

def _header_text(descr, fortran, shape):
    return "{" + f"'descr': {descr!r}, 'fortran_order': {fortran!r}, 'shape': {shape!r}, " + "}"


_simple_dtypes = st.sampled_from(["<f8", ">f4", "<i2", "|u1", "|b1", "<c8", "<U3", "|S7",
                                  "<M8[D]", ">m8[us]", "|V4", "<f2", ">u8"])
_shapes = st.lists(st.integers(0, 10**12), max_size=5).map(tuple)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(descr=_simple_dtypes, fortran=st.booleans(), shape=_shapes,
       version=st.sampled_from([(1, 0), (2, 0), (3, 0)]))
def test_fast_header_parser_agrees_with_numpys_parser(descr, fortran, shape, version):
    header = npy_header(_header_text(descr, fortran, shape), version)
    _npyformat.header_cache.clear()
    want_shape, want_fortran, want_dt = np_read_array_header(io.BytesIO(header[8:]), version)
    # numpy makes no array whose nonzero dimensions span more bytes than intp holds, even if
    # another dimension is 0 (np.empty((0, 2**30, 2**30), "<f8") is "too big")
    span = int(np.prod([d for d in want_shape if d], dtype=object)) * want_dt.itemsize
    if span > np.iinfo(np.intp).max:
        with pytest.raises(ValueError, match="more than any file can hold|more than numpy "
                                             "allows"):
            _npyformat.parse_header(header, None, len(header), "h")
        return
    start = 10 if version == (1, 0) else 12
    got = _npyformat.parse_header(header, None, len(header), "h")
    assert header[start:] in _npyformat.header_cache, "numpy-written headers take the fast path"
    assert got == (len(header), want_dt, want_shape, "F" if want_fortran else "C",
                   int(np.prod(want_shape, dtype=object)) * want_dt.itemsize)
    assert _npyformat.parse_header(header, None, len(header), "h") == got  # from the cache


@pytest.mark.parametrize("text", [
    "{'shape': (3,), 'fortran_order': False, 'descr': '<i4'}",      # other key order
    "{'descr':'<i4','fortran_order':False,'shape':(3,)}",             # no spaces
    "{'descr': [('a', '<i4'), ('', '|V4')], 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3L,), }",    # Python 2 long
    "{'descr': '<i4', 'fortran_order': False, 'shape': (0x3,), }",
])
def test_headers_off_the_fast_path_parse_as_numpy_parses_them(tmp_path, text):
    header = npy_header(text)
    path = tmp_path / "h.npy"
    path.write_bytes(header + bytes(24))
    with pytest.warns(UserWarning) if "3L" in text else _nothing():
        want = np.load(path)
    with pytest.warns(UserWarning) if "3L" in text else _nothing():
        with mmarray.load(path) as m:
            assert_same(m.array, want)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("shape", ["(010,)", "(-1,)", "(True,)"])
def test_fast_path_does_not_accept_what_numpy_rejects(tmp_path, shape):
    path = tmp_path / "h.npy"
    path.write_bytes(npy_header("{'descr': '<i4', 'fortran_order': False, 'shape': "
                                + shape + ", }") + bytes(8))
    try:
        want = np.load(path)
    except (ValueError, TypeError):
        with pytest.raises(ValueError):
            mmarray.load(path)
    else:
        with mmarray.load(path) as m:
            assert_same(m.array, want)


# -- header reading and writing with numpy's public API, against numpy's private functions ----

def _outcome(call):
    """What ``call()`` returns or raises, and the warnings it emits, comparable with ==."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("ok", call())
        except Exception as exc:
            cause = exc.__cause__
            result = ("raised", type(exc), str(exc), type(cause), str(cause))
    return result, [(w.category, str(w.message)) for w in caught]


_WIDE = np.dtype([(f"field_{i}", "<f8") for i in range(4000)])  # header past 64 KiB: 2.0
_HEADER_DTYPES = DTYPES + [
    _WIDE, np.dtype([("\u00e9t\u00e9", "<i4")]),                   # latin-1 name: 1.0
    np.dtype([("\u03b1", "<f4"), ("b", ">u2")]),                      # beyond latin-1: 3.0
    np.dtype([("\u6570", "<i8", (2, 3))]),
    np.dtype([(("title", "t"), "<i4"), ("u", "<f8")])]
_HEADER_SHAPES = [(), (0,), (5,), (3, 4), (2, 0, 7), (2**40, 3), (1, 2**62)]


@pytest.mark.parametrize("dtype", _HEADER_DTYPES, ids=lambda dt: str(np.dtype(dt))[:30])
@pytest.mark.parametrize("fortran", [False, True])
def test_header_bytes_are_what_numpys_writer_writes(dtype, fortran):
    """Public writers for 1.0 and 2.0, mmarray's for 3.0, numpy's version choice and
    warnings: byte for byte what numpy's private _write_array_header(version=None) does."""
    for shape in _HEADER_SHAPES:
        d = {"descr": npformat.dtype_to_descr(np.dtype(dtype)), "fortran_order": fortran,
             "shape": shape}

        def reference(d=d):
            buf = io.BytesIO()
            np_write_array_header(buf, d, None)
            return buf.getvalue()

        want = _outcome(reference)
        assert _outcome(lambda d=d: _npyformat.header_bytes(d)) == want
        assert want[0][0] == "ok"


def test_header_bytes_cover_every_version():
    versions = set()
    for dtype in _HEADER_DTYPES:
        d = {"descr": npformat.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
             "shape": (3,)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            versions.add(_npyformat.header_bytes(d)[6:8])
    assert versions == {b"\x01\x00", b"\x02\x00", b"\x03\x00"}


def _numpy_written(dtype, shape, fortran, version):
    d = {"descr": npformat.dtype_to_descr(np.dtype(dtype)), "fortran_order": fortran,
         "shape": shape}
    buf = io.BytesIO()
    np_write_array_header(buf, d, version)
    return buf.getvalue()


_BAD_HEADERS = [
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3L,), }",   # Python 2: 1.0/2.0 only
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
    "{'descr': '<i4', 'fortran_order': 0, 'shape': (3,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': [3], }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3.0,), }",
    "{'descr': 'nonsense', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': 5, 'fortran_order': False, 'shape': (3,), }",
    "{'descr': [('a', '<i4', 'x')], 'fortran_order': False, 'shape': (3,), }",
    "{1: 2, 'a': 3, 'b': 4}",
    "[1, 2, 3]",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), ",
    "{'descr': '\u03b1', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (" + "1, " * 3000 + "), }",
]


@pytest.mark.parametrize("version", [(1, 0), (2, 0), (3, 0)])
def test_header_readers_give_what_numpys_reader_gives(version):
    """numpy's public readers (1.0, 2.0) and mmarray's read_array_header_3_0, as mmarray
    calls them, against numpy's private _read_array_header: results, errors, warnings."""
    read = _npyformat._READERS[version]
    raws = []
    for make, args in ([(_numpy_written, (dtype, shape, fortran, version))
                        for dtype in _HEADER_DTYPES for shape in _HEADER_SHAPES[:4]
                        for fortran in (False, True)] +
                       [(npy_header, (text, version)) for text in _BAD_HEADERS]):
        try:
            raws.append(make(*args)[8:])
        except ValueError:  # too long for 1.0, or not latin-1 (1.0, 2.0)
            pass
    assert len(set(raws)) == len(raws) > 50
    raws += [raws[0][:3], raws[0][:20]]  # truncated: EOF
    for raw in raws:
        for limit in (10000, 50):
            want = _outcome(lambda raw=raw, limit=limit: np_read_array_header(
                io.BytesIO(raw), version, max_header_size=limit))
            assert _outcome(lambda raw=raw, limit=limit: read(
                io.BytesIO(raw), max_header_size=limit)) == want, raw


# -- rows -------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [slice(2, 5), slice(-3, None), slice(None, -8), slice(5, 2),
                                  slice(-100, 100), slice(None), slice(3, 4, 1), range(1, 6),
                                  range(-4, -1), (0, 3), (None, 2), (8, 100)])
@pytest.mark.parametrize("order", ["C", "F"])
def test_rows_follow_python_slicing_along_the_outer_axis(tmp_path, rows, order):
    arr = sample("<i4", (10, 3) if order == "C" else (3, 10), order)
    path = save(tmp_path, arr)
    sl = rows if isinstance(rows, slice) else slice(*(
        (rows.start, rows.stop) if isinstance(rows, range) else rows))
    want = arr[sl] if order == "C" else arr[:, sl]
    with mmarray.load(path, rows=rows) as m:
        assert_same(m.array, np.ascontiguousarray(want) if order == "C"
                    else np.asfortranarray(want))
        assert m.shape == want.shape and m.order == order
        start = sl.indices(10)[0]
        assert m.offset == len(npy_bytes(arr)) - arr.nbytes + start * 3 * 4


def test_rows_of_a_1d_array_are_elements(tmp_path):
    path = save(tmp_path, np.arange(10.0))
    with mmarray.load(path, rows=slice(7, None)) as m:
        assert m.array.tolist() == [7.0, 8.0, 9.0]


def test_rows_writes_through_r_plus_land_in_place(tmp_path):
    path = save(tmp_path, np.zeros((6, 2), np.int16))
    with mmarray.load(path, mode="r+", rows=slice(4, 6)) as m:
        m.array[:] = 7
        m.flush()
    assert np.load(path)[:, 0].tolist() == [0, 0, 0, 0, 7, 7]


@pytest.mark.parametrize("rows", [slice(0, 4, 2), slice(None, None, -1), range(0, 4, 2)])
def test_rows_with_a_step_is_a_value_error(tmp_path, rows):
    path = save(tmp_path, np.arange(10))
    with pytest.raises(ValueError, match="step 1"):
        mmarray.load(path, rows=rows)


@pytest.mark.parametrize("rows", [3, [1, 2], (1, 2, 3), "1:2", (1.5, 3)])
def test_rows_of_the_wrong_type_is_a_type_error(tmp_path, rows):
    path = save(tmp_path, np.arange(10))
    with pytest.raises(TypeError, match="rows"):
        mmarray.load(path, rows=rows)


def test_rows_of_a_0d_array_is_a_value_error(tmp_path):
    path = save(tmp_path, np.float64(3.0))
    with pytest.raises(ValueError, match="0-d"):
        mmarray.load(path, rows=slice(0, 1))


def test_rows_still_checks_the_whole_data_fits_the_file(tmp_path):
    path = save(tmp_path, np.arange(100))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        mmarray.load(path, rows=slice(0, 2))


@needs_proc_maps
def test_rows_near_the_end_of_a_6gib_sparse_file_map_only_those_rows(tmp_path):
    path = tmp_path / "huge.npy"
    shape = (6 * GIB // 4096, 512)       # float64 rows of 4 KiB: 6 GiB of data
    offset = write_sparse_npy(path, "<f8", shape)
    try:
        assert path.stat().st_size == offset + 6 * GIB
        if path.stat().st_blocks * 512 > 64 << 20:
            pytest.skip("the filesystem does not keep the file sparse")
        with mmarray.load(path, rows=slice(-10, -5)) as m:
            assert m.shape == (5, 512)
            assert m.offset == offset + (shape[0] - 10) * 4096
            assert len(mapped_regions(path)) == 1
            size = mapped_bytes(path)
            assert 5 * 4096 <= size <= 5 * 4096 + 2 * _engine.ALIGNMENT  # not 6 GiB
            a = m.array
            assert a.sum() == 0.0
            del a
        assert mapped_bytes(path) == 0
    finally:
        os.unlink(path)


# -- malformed files --------------------------------------------------------------------------

def _write(tmp_path, data):
    path = tmp_path / "bad.npy"
    path.write_bytes(data)
    return path


GOOD = npy_bytes(np.arange(6, dtype="<i4").reshape(2, 3))


@pytest.mark.parametrize("cut", [0, 3, 6, 7, 9])
def test_truncated_magic_or_length_field_is_a_value_error(tmp_path, cut):
    with pytest.raises(ValueError, match="truncated|neither a .npy"):
        mmarray.load(_write(tmp_path, GOOD[:cut]))


def test_truncated_header_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="runs past the end of the file"):
        mmarray.load(_write(tmp_path, GOOD[:60]))


def test_header_length_past_the_end_of_the_file_is_a_value_error(tmp_path):
    data = bytearray(GOOD)
    data[8:10] = (9000).to_bytes(2, "little")
    with pytest.raises(ValueError, match="header length 9000 runs past the end"):
        mmarray.load(_write(tmp_path, bytes(data)))


def test_v2_header_length_beyond_max_header_size_is_refused_before_reading(tmp_path):
    data = bytearray(npy_bytes(np.arange(3), version=(2, 0)))
    data[8:12] = (2**32 - 1).to_bytes(4, "little")
    with pytest.raises(ValueError, match="max_header_size"):
        mmarray.load(_write(tmp_path, bytes(data)))


@pytest.mark.parametrize("mode", ["r", "c", "r+"])
def test_header_shape_larger_than_the_file_is_a_value_error(tmp_path, mode):
    with pytest.raises(ValueError, match=r"\(2, 3\) x int32 = 24 bytes.*only 20 bytes"):
        mmarray.load(_write(tmp_path, GOOD[:-4]), mode=mode)


def test_header_shape_overflowing_64_bits_is_a_value_error(tmp_path):
    path = _write(tmp_path, npy_header(
        "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"))
    with pytest.raises(ValueError, match="more than any file can hold"):
        mmarray.load(path)


@pytest.mark.parametrize("arr", [np.array([1, "a", None], dtype=object),
                                 np.zeros(2, dtype=[("a", "<i4"), ("o", "O")])])
def test_object_dtypes_are_a_value_error_naming_allow_pickle(tmp_path, arr):
    path = tmp_path / "obj.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(path)
    with pytest.raises(ValueError, match="allow_pickle"):
        mmarray.load(path)


def test_a_pickle_file_is_a_value_error_naming_allow_pickle(tmp_path):
    path = tmp_path / "p.npy"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(ValueError, match="allow_pickle"):
        mmarray.load(path)


@pytest.mark.parametrize("version", [b"\x00\x00", b"\x04\x00", b"\x01\x01", b"\xff\xff"])
def test_unknown_format_version_is_a_value_error(tmp_path, version):
    with pytest.raises(ValueError, match="unsupported .npy format version"):
        mmarray.load(_write(tmp_path, GOOD[:6] + version + GOOD[8:]))


@pytest.mark.parametrize("text", [
    "{'descr': 'not-a-dtype', 'fortran_order': False, 'shape': (3,), }",
    "{'descr': '<i4', 'fortran_order': 1, 'shape': (3,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': [3], }",
    "{'descr': '<i4', 'fortran_order': False}",
    "['descr', 'fortran_order', 'shape']",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), ",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (-3,), }",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (" + "1, " * 65 + "), }",  # > 64
    "{'descr': " + "(" * 300 + "'<i4'" + ")" * 300 + ", 'fortran_order': False, 'shape': (3,)}",
    "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }\x00",
])
def test_bad_header_contents_are_a_value_error(tmp_path, text):
    with pytest.raises(ValueError):
        mmarray.load(_write(tmp_path, npy_header(text) + bytes(64)))


@pytest.mark.parametrize("descr", ["'<f8'", "[('a', '<f8')]"])  # the regex, numpy's parser
def test_a_header_of_more_than_64_dimensions_is_refused_naming_the_file(tmp_path, descr):
    text = "{'descr': " + descr + ", 'fortran_order': False, 'shape': (" + "1, " * 65 + "), }"
    path = _write(tmp_path, npy_header(text) + bytes(8))
    for file in (str(path), str(path), path):  # the first load, a later one, a Path
        with pytest.raises(ValueError, match=r"bad\.npy.*65 dimensions, more than 64"):
            mmarray.load(file)


def test_a_dtype_with_fields_is_never_shared_between_loads(tmp_path):
    # dtype.names can be set: renaming one file's fields must not rename the next one's (as
    # a dtype cached by its header bytes and handed to every file would)
    paths = []
    for i in range(3):
        p = str(tmp_path / f"s{i}.npy")
        np.save(p, np.zeros(2 + i, "i4,i4"))  # the header is parsed by the regex
        paths.append(p)
    with mmarray.load(paths[0]) as m:
        m.array.dtype.names = ("x", "y")
    for p in paths + paths:
        with mmarray.load(p) as m:
            assert m.dtype.names == ("f0", "f1") == np.load(p).dtype.names


def test_not_a_npy_or_npz_file_is_a_value_error_saying_so(tmp_path):
    with pytest.raises(ValueError, match="neither a .npy file.*nor a .npz"):
        mmarray.load(_write(tmp_path, b"hello world, this is text"))


# -- create_npy -------------------------------------------------------------------------------

@pytest.mark.parametrize("fortran_order", [False, True])
@pytest.mark.parametrize("dtype", ["<f8", ">i2", [("a", "<u1"), ("b", "<f4")]], ids=str)
def test_create_npy_writes_a_file_np_load_reads(tmp_path, dtype, fortran_order):
    path = tmp_path / "new.npy"
    want = sample(dtype, (4, 3), "F" if fortran_order else "C")
    with mmarray.create_npy(path, dtype, (4, 3), fortran_order=fortran_order) as m:
        assert m.mode == "w+" and m.order == ("F" if fortran_order else "C")
        assert not m.array.any() if np.dtype(dtype).names is None else True
        m.array[...] = want
        m.flush()
    got = np.load(path)
    assert_same(got, want)
    assert got.flags.f_contiguous == fortran_order
    with mmarray.load(path) as m:
        assert_same(m.array, want)


def test_create_npy_is_open_memmaps_equivalent(tmp_path):
    ours, theirs = tmp_path / "ours.npy", tmp_path / "theirs.npy"
    m = mmarray.create_npy(ours, "<i8", (3, 5))
    mm = npformat.open_memmap(theirs, mode="w+", dtype="<i8", shape=(3, 5))
    m.array[:] = 9
    mm[:] = 9
    m.close()
    mm.flush()
    del mm
    assert ours.read_bytes() == theirs.read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="st_blocks semantics")
def test_create_npy_preallocates_the_data(tmp_path):
    path = tmp_path / "pre.npy"
    with mmarray.create_npy(path, "u1", 1 << 20):
        st_ = os.stat(path)
        assert st_.st_size == 128 + (1 << 20)
        assert st_.st_blocks * 512 >= 1 << 20     # real blocks, not a sparse hole


def test_create_npy_zero_size_and_0d(tmp_path):
    with mmarray.create_npy(tmp_path / "e.npy", "f4", (0, 3)) as m:
        assert m.shape == (0, 3)
    assert np.load(tmp_path / "e.npy").shape == (0, 3)
    with mmarray.create_npy(tmp_path / "s.npy", "f4", ()) as m:
        m.array[()] = 2.5
    assert np.load(tmp_path / "s.npy")[()] == 2.5


def test_create_npy_with_subarray_dtype_gives_trailing_axes(tmp_path):
    with mmarray.create_npy(tmp_path / "sub.npy", ("<i2", (2,)), 3) as m:
        assert m.shape == (3, 2) and m.dtype == np.dtype("<i2")
    assert np.load(tmp_path / "sub.npy").shape == (3, 2)


@pytest.mark.parametrize("shape", [np.int64(3), np.uint8(3), (np.int32(3),)])
def test_create_npy_with_subarray_dtype_takes_any_integer_shape(tmp_path, shape):
    # The subarray path took only int for a 1-D shape: np.int64(3) was "not iterable".
    with mmarray.create_npy(tmp_path / "sub.npy", "(2,)f8", shape) as m:
        assert m.shape == (3, 2) and m.dtype == np.dtype("f8")
    assert np.load(tmp_path / "sub.npy").shape == (3, 2)


@pytest.mark.parametrize("shape, exc, match", [
    (3.0, TypeError, "shape"), (-1, ValueError, "negative"), ("ab", TypeError, "shape")])
def test_create_npy_with_subarray_dtype_refuses_bad_shapes(tmp_path, shape, exc, match):
    with pytest.raises(exc, match=match):
        mmarray.create_npy(tmp_path / "bad.npy", "(2,)f8", shape)
    assert os.listdir(tmp_path) == []


def test_create_npy_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_npyformat, "map_region", fail)
    with pytest.raises(OSError, match="No space"):
        mmarray.create_npy(tmp_path / "fail.npy", "f8", 100)
    assert os.listdir(tmp_path) == []


def test_create_npy_failure_leaves_an_existing_file_untouched(tmp_path, monkeypatch):
    path = save(tmp_path, np.arange(3))
    before = path.read_bytes()
    monkeypatch.setattr(_npyformat, "map_region", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        mmarray.create_npy(path, "f8", 100)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["a.npy"]


def test_create_npy_over_a_mapped_file_keeps_the_old_mapping_valid(tmp_path):
    path = save(tmp_path, np.arange(100_000, dtype=np.int64))
    old = mmarray.load(path)
    a = old.array
    with mmarray.create_npy(path, "i1", 3) as m:
        m.array[:] = [1, 2, 3]
    assert a[-1] == 99_999            # no SIGBUS: the old file's data is still mapped
    assert np.load(path).tolist() == [1, 2, 3]
    del a
    old.close()


def test_create_npy_keeps_the_permission_bits_of_the_file_it_replaces(tmp_path):
    path = save(tmp_path, np.arange(3))
    os.chmod(path, 0o640)
    mmarray.create_npy(path, "f4", 2).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_create_npy_through_a_symlink_replaces_the_target(tmp_path):
    target = save(tmp_path, np.arange(3))
    link = tmp_path / "link.npy"
    os.symlink(target, link)
    mmarray.create_npy(link, "u1", 2).close()
    assert os.path.islink(link)
    assert np.load(target).dtype == np.uint8


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"dtype": object, "shape": 3}, TypeError, "objects"),
    ({"dtype": "f8", "shape": -1}, ValueError, "negative"),
    ({"dtype": "f8", "shape": "abc"}, TypeError, "shape"),
    ({"dtype": "f8", "shape": 3, "fortran_order": "yes"}, TypeError, "fortran_order"),
    ({"dtype": "f8", "shape": (2**40, 2**40)}, ValueError, "overflows"),
])
def test_create_npy_bad_arguments_name_the_value(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        mmarray.create_npy(tmp_path / "bad.npy", **kwargs)
    assert os.listdir(tmp_path) == []


def test_create_npy_refuses_file_objects(tmp_path):
    with open(tmp_path / "f.npy", "wb") as f:
        with pytest.raises(TypeError, match="path"):
            mmarray.create_npy(f, "f8", 3)


def test_create_npy_in_a_missing_directory_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        mmarray.create_npy(tmp_path / "no" / "such.npy", "f8", 3)


def test_version_3_header_over_max_header_size_in_characters_is_refused_as_numpy_does(tmp_path):
    # It loaded: the v3 limit was 4 x max_header_size bytes (UTF-8), and the parsed
    # header's characters were never counted, which is what numpy checks.
    text = "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }"
    text = (text + " " * (20000 - len(text) - 1) + "\n").encode()
    path = tmp_path / "v3.npy"
    path.write_bytes(b"\x93NUMPY\x03\x00" + struct.pack("<I", len(text)) + text
                     + np.arange(4.0).tobytes())
    with pytest.raises(ValueError, match="large"):
        np.load(path)
    with pytest.raises(ValueError, match="20000 characters exceeds max_header_size=10000"):
        mmarray.load(path)
    with mmarray.load(path, max_header_size=20000) as m:
        assert m.array.tolist() == [0.0, 1.0, 2.0, 3.0]
