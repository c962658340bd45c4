"""mmarray.memmap and mmarray.open_memmap: numpy compatibility and what they add (close)."""
from __future__ import annotations

import gc
import os
import pathlib
import pickle
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

import mmarray
from mmarray import _engine
from helpers import assert_clean_exit, run_python

PAGE = _engine.ALIGNMENT


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "data.bin")


def _write(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data)


def _type_name(obj):
    """numpy.memmap and mmarray.memmap both as 'memmap'; anything else by its type."""
    if type(obj) in (np.memmap, mmarray.memmap):
        return "memmap"
    return type(obj).__name__


# -- the class ------------------------------------------------------------------------------

def test_memmap_is_a_numpy_memmap_subclass_exported_by_mmarray():
    assert issubclass(mmarray.memmap, np.memmap)
    assert "memmap" in mmarray.__all__ and "open_memmap" in mmarray.__all__
    assert mmarray.memmap.__module__ == "mmarray"


def test_memmap_roundtrip_writes_the_file_and_reads_it_back(path):
    data = np.arange(12, dtype="float32").reshape(3, 4)
    fp = mmarray.memmap(path, dtype="float32", mode="w+", shape=(3, 4))
    fp[:] = data
    fp.flush()
    del fp
    assert np.array_equal(np.fromfile(path, dtype="float32").reshape(3, 4), data)
    r = mmarray.memmap(path, dtype="float32", mode="r", shape=(3, 4))
    assert np.array_equal(r, data)
    assert not r.flags.writeable


def test_memmap_attributes_match_numpy_for_each_kind_of_filename(tmp_path):
    p = tmp_path / "a.bin"
    _write(p, bytes(64))
    cases = [str(p), p, os.fsencode(str(p))]
    for filename in cases:
        ours = mmarray.memmap(filename, mode="r", offset=8)
        theirs = np.memmap(filename, mode="r", offset=8)
        assert (ours.filename, ours.offset, ours.mode) == \
            (theirs.filename, theirs.offset, theirs.mode), filename
        assert type(ours.filename) is type(theirs.filename)
    with open(p, "rb+") as f:
        ours, theirs = mmarray.memmap(f, mode="r+"), np.memmap(f, mode="r+")
        assert ours.filename == theirs.filename == str(p)
    with tempfile.TemporaryFile() as f:  # a name that is not a str: no filename
        ours, theirs = mmarray.memmap(f, shape=4), np.memmap(f, shape=4)
        assert ours.filename is None and theirs.filename is None


def test_memmap_long_mode_names_are_accepted_and_shortened(path):
    _write(path, bytes(8))
    for long, short in [("readonly", "r"), ("copyonwrite", "c"), ("readwrite", "r+"),
                        ("write", "w+")]:
        mm = mmarray.memmap(path, mode=long, shape=8)
        assert mm.mode == short
        del mm  # 'write' truncates: refused while an earlier memmap of the file is alive


@pytest.mark.parametrize("shape", [3, np.int64(3), [3], (3,), np.array([3]), range(3, 4)])
def test_memmap_accepts_the_shape_types_numpy_accepts(path, shape):
    mm = mmarray.memmap(path, mode="w+", shape=shape)
    assert mm.shape == (3,)


def test_memmap_without_shape_is_1d_over_the_rest_of_the_file(path):
    _write(path, bytes(range(16)))
    mm = mmarray.memmap(path, dtype="uint16", mode="r", offset=4)
    assert mm.shape == (6,)
    assert np.array_equal(mm, np.memmap(path, dtype="uint16", mode="r", offset=4))


def test_memmap_fortran_order_lays_out_columns_first(path):
    mm = mmarray.memmap(path, dtype="int8", mode="w+", shape=(2, 3), order="F")
    mm[:] = [[1, 2, 3], [4, 5, 6]]
    mm.flush()
    assert mm.flags.f_contiguous
    assert pathlib.Path(path).read_bytes() == bytes([1, 4, 2, 5, 3, 6])


def test_memmap_copy_on_write_never_reaches_the_file(path):
    _write(path, bytes(4))
    mm = mmarray.memmap(path, mode="c")
    mm[:] = 9
    mm.flush()
    assert mm.tolist() == [9, 9, 9, 9]
    assert pathlib.Path(path).read_bytes() == bytes(4)


def test_memmap_file_object_is_flushed_grown_and_left_open(tmp_path):
    with open(tmp_path / "f.bin", "w+b") as f:
        f.write(b"\x01\x02")  # buffered: must reach the file before mapping
        mm = mmarray.memmap(f, mode="r+", shape=4)
        assert mm.tolist() == [1, 2, 0, 0]
        assert not f.closed
        assert os.fstat(f.fileno()).st_size == 4


def test_memmap_w_plus_on_a_path_truncates_like_numpy(path):
    _write(path, b"\xff" * 100)
    mm = mmarray.memmap(path, mode="w+", shape=10)
    assert mm.tolist() == [0] * 10
    assert os.path.getsize(path) == 10


_ERROR_CASES = {
    "bad mode": dict(mode="x", shape=4),
    "w+ without shape": dict(mode="w+"),
    "shape past the end in mode r": dict(mode="r", shape=100),
    "shape past the end in mode c": dict(mode="c", shape=100),
    "size not a multiple of the itemsize": dict(mode="r", dtype="float64"),
    "empty file in mode r": dict(mode="r", empty=True),
    "empty file in mode c, zero-size shape": dict(mode="c", shape=0, empty=True),
    "offset past the end in mode r": dict(mode="r", offset=20),
    "offset past the end in mode r, zero-size shape": dict(mode="r", offset=20, shape=0),
    "float offset": dict(mode="r", offset=1.0),
    "bad order": dict(mode="r", shape=(2, 2), order="X"),
    "missing file in mode r": dict(mode="r", missing=True),
    "missing file in mode r+": dict(mode="r+", missing=True),
    "missing file in mode c": dict(mode="c", missing=True),
    "directory": dict(mode="r", directory=True),
}


@pytest.mark.parametrize("case", sorted(_ERROR_CASES))
def test_memmap_raises_the_exception_type_numpy_raises(tmp_path, case):
    kwargs = dict(_ERROR_CASES[case])
    target = tmp_path / "f.bin"
    _write(target, b"" if kwargs.pop("empty", False) else bytes(10))
    if kwargs.pop("missing", False):
        target = tmp_path / "missing.bin"
    if kwargs.pop("directory", False):
        target = tmp_path
    with pytest.raises(Exception) as numpy_error:
        np.memmap(str(target), **kwargs)
    with pytest.raises(type(numpy_error.value)):
        mmarray.memmap(str(target), **kwargs)


def test_memmap_refuses_object_dtypes_which_numpy_would_map_unsafely(path):
    _write(path, bytes(8))
    with pytest.raises(TypeError, match="Python objects"):
        mmarray.memmap(path, dtype=object, mode="r", shape=1)


@pytest.mark.parametrize("order", ["A", "K"])
def test_memmap_order_a_and_k_mean_c_as_in_numpy(path, order):
    mm = mmarray.memmap(path, mode="w+", shape=(2, 3), order=order)
    assert mm.flags.c_contiguous == np.memmap(path, mode="r+", shape=(2, 3), order=order) \
        .flags.c_contiguous == True  # noqa: E712


# -- views, ufuncs, reductions: the same types as numpy ------------------------------------

_OPERATIONS = {
    "np.add(mm, 1)": lambda a: np.add(a, 1),
    "mm + mm": lambda a: a + a,
    "mm * ndarray": lambda a: a * np.ones(a.shape, a.dtype),
    "ndarray - mm": lambda a: np.ones(a.shape, a.dtype) - a,
    "np.negative": np.negative,
    "np.sum": np.sum,
    "np.sum axis=0": lambda a: np.sum(a, axis=0),
    "mm.sum keepdims": lambda a: a.sum(axis=1, keepdims=True),
    "mm.mean": lambda a: a.mean(),
    "np.average": np.average,
    "np.prod axis=1": lambda a: np.prod(a, axis=1),
    "mm.max": lambda a: a.max(),
    "basic slice": lambda a: a[1:, :-1],
    "row": lambda a: a[0],
    "element": lambda a: a[0, 0],
    "fancy index": lambda a: a[[0, 1]],
    "boolean mask": lambda a: a[a > 3],
    "transpose": lambda a: a.T,
    "reshape": lambda a: a.reshape(-1),
    "view()": lambda a: a.view(),
    "view(ndarray)": lambda a: a.view(np.ndarray),
    "np.asarray": np.asarray,
    "np.asanyarray": np.asanyarray,
    "copy()": lambda a: a.copy(),
    "np.sort": lambda a: np.sort(a, axis=1),
    "in-place +=": lambda a: a.__iadd__(1),
    "out=mm": lambda a: np.add(a, 1, out=a),
    "astype": lambda a: a.astype("float64"),
    "np.concatenate": lambda a: np.concatenate([a, a]),
    "np.where": lambda a: np.where(a > 2, a, 0),
}


@pytest.mark.parametrize("name", sorted(_OPERATIONS))
def test_operation_returns_the_same_type_as_on_numpy_memmap(tmp_path, name):
    op = _OPERATIONS[name]
    ours = mmarray.memmap(str(tmp_path / "a.bin"), dtype="float32", mode="w+", shape=(3, 4))
    theirs = np.memmap(str(tmp_path / "b.bin"), dtype="float32", mode="w+", shape=(3, 4))
    ours[:] = theirs[:] = np.arange(12).reshape(3, 4)
    a, b = op(ours), op(theirs)
    assert _type_name(a) == _type_name(b)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    if _type_name(b) == "memmap":
        assert type(a) is mmarray.memmap
        assert (a.offset, a.mode) == (b.offset, b.mode)
        assert (a.filename is None) == (b.filename is None)


def test_np_add_returns_an_ndarray_like_numpy_memmap(path):
    mm = mmarray.memmap(path, dtype="int32", mode="w+", shape=4)
    out = np.add(mm, 1)
    assert type(out) is type(np.add(np.memmap(path, dtype="int32", mode="r"), 1))
    assert type(out) is np.ndarray
    assert out.tolist() == [1, 1, 1, 1]


def test_views_inherit_the_file_attributes_and_mapping(path):
    mm = mmarray.memmap(path, dtype="int16", mode="w+", shape=(4, 4), offset=6)
    v = mm[1:3, ::2]
    assert type(v) is mmarray.memmap
    assert (v.filename, v.offset, v.mode) == (mm.filename, 6, "w+")
    assert v._mmap is mm._mmap
    assert v.base is mm
    assert np.asarray(mm).base is mm


def test_subclass_of_memmap_keeps_its_type_as_numpy_subclasses_do(path):
    class Sub(mmarray.memmap):
        pass

    fp = Sub(path, dtype="float32", mode="w+", shape=(3, 4))
    assert type(np.sum(fp, axis=0)) is Sub
    assert type(fp[1:]) is Sub
    assert type(fp[[0, 1]]) is Sub


class _PickledSub(mmarray.memmap):
    """A subclass at module level: pickle finds a class by its qualified name."""


class _NumpySub(np.memmap):
    """numpy's behaviour, the reference: a pickled subclass comes back as that subclass."""


@pytest.mark.parametrize("mode", ["r", "r+", "w+", "c"])
def test_subclass_of_memmap_unpickles_as_its_own_class_in_every_mode(path, mode):
    with open(path, "wb") as f:
        f.write(bytes(range(8)))
    shape = 8 if mode == "w+" else None
    reference = _NumpySub(path, dtype="u1", mode=mode, shape=shape)
    assert type(pickle.loads(pickle.dumps(reference))) is _NumpySub
    del reference
    fp = _PickledSub(path, dtype="u1", mode=mode, shape=shape)
    if mode != "r":
        fp[:] = np.arange(8)  # ('w+' starts from zeros)
    back = pickle.loads(pickle.dumps(fp[2:6]))
    assert type(back) is _PickledSub
    assert back.tolist() == [2, 3, 4, 5]
    if mode != "c":  # 'r', 'r+', 'w+' pickle a reference: the same file, mapped again
        assert mmarray.mapping_of(back) is not None
        assert back.mode == ("r+" if mode == "w+" else mode)
    fp.close()


def test_memmap_pickled_before_the_class_was_stored_unpickles_as_memmap(path):
    from mmarray._compat import _memmap_from_ref

    with open(path, "wb") as f:
        f.write(bytes(range(8)))
    reference = mmarray.ref(mmarray.open(path, dtype="u1", mode="r").array)
    old = _memmap_from_ref(reference, path, 0, "r")  # the four arguments of older pickles
    assert type(old) is mmarray.memmap and old.tolist() == list(range(8))
    with pytest.raises(TypeError, match="mmarray.memmap or a subclass of it, got class "
                                        "numpy.ndarray"):
        _memmap_from_ref(reference, path, 0, "r", np.ndarray)
    with pytest.raises(TypeError, match="got a str"):
        _memmap_from_ref(reference, path, 0, "r", "memmap")

    class Loud(type):
        def __repr__(cls):
            raise RuntimeError("repr of a crafted class")

    with pytest.raises(TypeError, match="got class .*Crafted"):
        _memmap_from_ref(reference, path, 0, "r", Loud("Crafted", (), {}))


def test_a_plain_memmap_pickles_with_the_four_fields_older_versions_read(path):
    with open(path, "wb") as f:
        f.write(bytes(range(8)))
    fp = mmarray.memmap(path, dtype="u1", mode="r")
    rebuild, fields = fp.__reduce__()
    assert len(fields) == 4  # (reference, filename, offset, mode): no class for memmap itself
    assert type(rebuild(*fields)) is mmarray.memmap
    sub = _PickledSub(path, dtype="u1", mode="r")
    assert sub.__reduce__()[1][4] is _PickledSub
    fp.close()
    sub.close()


# -- close ------------------------------------------------------------------------------------

def test_close_without_views_unmaps_once_the_memmap_is_released(path):
    mm = mmarray.memmap(path, mode="w+", shape=PAGE)
    mapping = mmarray.mapping_of(mm)
    mm.close()
    assert mm.closed and mapping.closed
    assert mapping.exports == 1  # the memmap itself: still valid to use
    mm[0] = 1
    del mm
    assert mapping.exports == 0
    assert mapping._mapped_length() == 0


def test_close_with_a_live_view_defers_unmap_until_the_view_goes(path):
    mm = mmarray.memmap(path, dtype="int64", mode="w+", shape=100)
    mm[:] = np.arange(100)
    mapping = mmarray.mapping_of(mm)
    view = mm[10:20]
    mm.close()
    del mm
    gc.collect()
    assert mapping.closed
    assert mapping._mapped_length() == 800  # still mapped: the view uses it
    assert view.tolist() == list(range(10, 20))
    view[:] = -1
    assert int(view.sum()) == -10
    del view
    assert mapping._mapped_length() == 0
    assert mapping.exports == 0


def test_close_strict_with_a_live_view_raises_and_changes_nothing(path):
    mm = mmarray.memmap(path, mode="w+", shape=16)
    view = mm[4:8]
    with pytest.raises(BufferError, match="1 other"):
        mm.close(strict=True)
    assert not mm.closed
    mm.flush()  # still open
    del view
    mm.close(strict=True)
    assert mm.closed


@pytest.mark.parametrize("make_user", [
    lambda mm: mm.T,
    lambda mm: mm.reshape(4, 4)[1],
    lambda mm: mmarray.mapping_of(mm).array,
    lambda mm: memoryview(mmarray.mapping_of(mm)),
], ids=["transpose", "row of a reshape", "another array of the mapping",
        "memoryview of the mapping"])
def test_close_strict_sees_each_kind_of_other_user(path, make_user):
    mm = mmarray.memmap(path, mode="w+", shape=16)
    user = make_user(mm)
    with pytest.raises(BufferError):
        mm.close(strict=True)
    assert not mm.closed
    if isinstance(user, memoryview):
        user.release()
    del user
    mm.close(strict=True)
    assert mm.closed


def test_close_strict_on_a_view_raises_because_its_memmap_is_alive(path):
    mm = mmarray.memmap(path, mode="w+", shape=16)
    view = mm[2:]
    with pytest.raises(BufferError):
        view.close(strict=True)
    view.close()  # non-strict: closes the mapping shared with mm
    assert mm.closed and view.closed


def test_close_is_idempotent_and_flush_after_close_raises(path):
    mm = mmarray.memmap(path, mode="w+", shape=4)
    mm.close()
    mm.close()
    mm.close(strict=True)  # already closed: nothing to refuse
    assert mm.closed
    with pytest.raises(ValueError, match="closed"):
        mm.flush()
    assert mm[1:].closed  # views made after close see the closed mapping


def test_close_through_mmarray_close_reaches_the_memmap_mapping(path):
    mm = mmarray.memmap(path, mode="w+", shape=4)
    mmarray.close(mm[1:])
    assert mm.closed


def test_close_on_arrays_that_map_nothing_is_a_no_op(path):
    mm = mmarray.memmap(path, mode="w+", shape=4)
    cow = mmarray.memmap(path, mode="c", shape=4)  # mode 'c' pickles a copy, as numpy does
    for other in (mm.copy(), pickle.loads(pickle.dumps(cow)),
                  np.arange(3).view(mmarray.memmap)):
        assert type(other) is mmarray.memmap
        other.close(strict=True)
        other.flush()
        assert not other.closed
    assert not mm.closed


def test_views_stay_valid_after_close_in_a_subprocess(tmp_path):
    # Any crash (SIGSEGV/SIGBUS from touching an unmapped page) shows as a non-zero exit.
    script = textwrap.dedent("""
        import gc, sys
        import numpy as np
        import mmarray

        path = sys.argv[1]
        mm = mmarray.memmap(path, dtype=np.int64, mode="w+", shape=(1000,))
        mm[:] = np.arange(1000)
        mapping = mmarray.mapping_of(mm)
        views = [mm[10:20], mm[::7], mm.reshape(10, 100)[3], np.asarray(mm)[5:9],
                 mm.view(np.ndarray), mm.T, memoryview(mm)]
        mm.close()
        mmarray.close(views[0])
        del mm
        gc.collect()
        for _ in range(3):
            for v in views:
                a = np.asarray(v)
                a[...] = a + 1
                assert int(a.sum()) != 0
        assert mapping.closed and mapping._mapped_length() == 8000
        views.append(views[0][2:])     # a view made after close
        views[-1][:] = 5
        del a, v
        while views:                   # drop the views one by one, using the rest each time
            views.pop()
            gc.collect()
            assert all(np.isfinite(np.asarray(w).sum()) for w in views)
        assert mapping._mapped_length() == 0 and mapping.exports == 0
        check = np.fromfile(path, dtype=np.int64)
        assert check[10] != 10        # the writes reached the file
        with mmarray.memmap(path, dtype=np.int64, mode="r") as again:
            assert again[999] == check[999]
        print("ok")
    """)
    src = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [src] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", script,
                           str(tmp_path / "v.bin")], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


# -- context manager -----------------------------------------------------------------------

def test_context_manager_closes_on_exit(path):
    with mmarray.memmap(path, mode="w+", shape=8) as mm:
        mm[:] = 3
        assert not mm.closed
    assert mm.closed
    assert mm.tolist() == [3] * 8  # still valid after close


def test_context_manager_closes_when_the_block_raises(path):
    with pytest.raises(KeyError):
        with mmarray.memmap(path, mode="w+", shape=8) as mm:
            raise KeyError("boom")
    assert mm.closed


# -- no descriptor held ----------------------------------------------------------------------

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_no_file_descriptor_is_held_by_200_memmaps(path, mode):
    _write(path, bytes(4096))
    before = len(os.listdir("/proc/self/fd"))
    maps = [mmarray.memmap(path, mode=mode) for _ in range(200)]
    after = len(os.listdir("/proc/self/fd"))
    assert after == before
    assert all(m.shape == (4096,) for m in maps)
    for m in maps:
        m.close()
    assert len(os.listdir("/proc/self/fd")) == before


# -- zero-size -------------------------------------------------------------------------------

def test_zero_size_w_plus_creates_an_empty_file_and_an_empty_memmap(path):
    mm = mmarray.memmap(path, dtype="float64", mode="w+", shape=(0, 4))
    assert mm.shape == (0, 4) and type(mm) is mmarray.memmap
    assert os.path.getsize(path) == 0  # numpy would write one byte
    mm.flush()
    mm.close()
    assert mm.closed


def test_zero_size_with_offset_grows_the_file_to_the_offset(path):
    mm = mmarray.memmap(path, mode="w+", shape=0, offset=PAGE)
    assert mm.offset == PAGE and mm.size == 0
    assert os.path.getsize(path) == PAGE


def test_zero_size_in_mode_r_maps_a_non_empty_file_like_numpy(path):
    _write(path, bytes(10))
    ours = mmarray.memmap(path, mode="r", shape=0)
    theirs = np.memmap(path, mode="r", shape=0)
    assert ours.shape == theirs.shape == (0,)
    assert ours.flags.writeable == theirs.flags.writeable == False  # noqa: E712


@pytest.mark.parametrize("mode", ["r", "c"])
def test_zero_size_on_an_empty_file_raises_like_numpy(path, mode):
    _write(path, b"")
    with pytest.raises(ValueError, match="empty file"):
        mmarray.memmap(path, mode=mode, shape=(0, 4))
    with pytest.raises(ValueError, match="empty file"):
        mmarray.memmap(path, mode=mode)


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_no_shape_with_nothing_after_offset_gives_an_empty_memmap_like_numpy(path, mode):
    _write(path, bytes(12))
    ours = mmarray.memmap(path, mode=mode, offset=12)
    theirs = np.memmap(path, mode=mode, offset=12)
    assert ours.shape == theirs.shape == (0,)


def test_no_shape_on_an_empty_file_in_mode_r_plus_gives_an_empty_memmap(path):
    _write(path, b"")
    mm = mmarray.memmap(path, mode="r+")
    assert mm.shape == (0,)


# -- unaligned offsets ---------------------------------------------------------------------

@pytest.mark.parametrize("offset", [1, 3, 7, PAGE - 1, PAGE + 1, 3 * PAGE + 5, 65537])
def test_unaligned_offsets_read_the_right_bytes(path, offset):
    payload = np.random.default_rng(offset).integers(0, 256, offset + 800, dtype=np.uint8)
    _write(path, payload.tobytes())
    mm = mmarray.memmap(path, dtype="float64", mode="r", offset=offset, shape=100)
    expected = np.frombuffer(payload.tobytes()[offset:offset + 800], dtype="float64")
    assert mm.tobytes() == expected.tobytes()
    assert mm.offset == offset


@pytest.mark.parametrize("offset", [1, PAGE + 3])
def test_unaligned_offsets_write_exactly_there(path, offset):
    _write(path, bytes(offset + 16))
    mm = mmarray.memmap(path, dtype="uint32", mode="r+", offset=offset, shape=4)
    mm[:] = [1, 2, 3, 4]
    mm.flush()
    data = pathlib.Path(path).read_bytes()
    assert data[:offset] == bytes(offset)
    assert np.frombuffer(data[offset:], dtype="uint32").tolist() == [1, 2, 3, 4]


def test_offset_beyond_the_end_grows_the_file_in_mode_r_plus(path):
    _write(path, bytes(3))
    mm = mmarray.memmap(path, mode="r+", offset=2 * PAGE + 1, shape=5)
    mm[:] = 1
    mm.flush()
    assert os.path.getsize(path) == 2 * PAGE + 6


# -- pickling --------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_mode_c_behaves_like_numpy_memmap(path, protocol):
    """Mode 'c' pickles a copy of the data (its changes are not in the file), as numpy."""
    ours = mmarray.memmap(path, dtype="float32", mode="w+", shape=(2, 3))
    ours[:] = np.arange(6).reshape(2, 3)
    ours.flush()
    cow = mmarray.memmap(path, dtype="float32", mode="c", shape=(2, 3))
    theirs = np.memmap(path, dtype="float32", mode="c", shape=(2, 3))
    cow[0, 0] = theirs[0, 0] = 9  # private changes travel with the copy
    a = pickle.loads(pickle.dumps(cow, protocol=protocol))
    b = pickle.loads(pickle.dumps(theirs, protocol=protocol))
    assert type(a) is mmarray.memmap and type(b) is np.memmap
    assert a.tolist() == b.tolist() == [[9, 1, 2], [3, 4, 5]]
    for attr in ("filename", "offset", "mode", "_mmap"):
        assert getattr(a, attr) is None and getattr(b, attr) is None, attr
    assert _type_name(a[1:]) == _type_name(b[1:])
    a[:] = -1  # a copy: the file is untouched
    assert ours.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickling_mode_r_plus_is_by_reference_to_the_same_bytes(path, protocol):
    ours = mmarray.memmap(path, dtype="float32", mode="w+", shape=(200, 300))
    ours[:] = np.arange(60_000).reshape(200, 300)
    payload = pickle.dumps(ours, protocol=protocol)
    assert len(payload) < 1024  # 240 KB of data: none of it travels
    a = pickle.loads(payload)
    assert type(a) is mmarray.memmap
    assert (a.filename, a.offset, a.mode) == (ours.filename, 0, "r+")  # w+ becomes r+
    assert np.array_equal(a, ours)
    a[5, 7] = -1  # the same file: the write shows through the original
    assert ours[5, 7] == -1
    a.close()


def test_pickling_a_slice_refers_to_the_slice_only(path):
    mm = mmarray.memmap(path, dtype="int8", mode="w+", shape=6)
    mm[:] = range(6)
    out = pickle.loads(pickle.dumps(mm[2:4]))
    assert out.tolist() == [2, 3] and out.filename == mm.filename
    assert mmarray.mapping_of(out).nbytes == 2  # just the slice's bytes are mapped


# -- open_memmap ------------------------------------------------------------------------------

def test_open_memmap_creates_a_file_numpy_loads(tmp_path):
    path = tmp_path / "a.npy"
    arr = np.arange(24, dtype="<i4").reshape(2, 3, 4)
    mm = mmarray.open_memmap(path, mode="w+", dtype=arr.dtype, shape=arr.shape)
    assert type(mm) is mmarray.memmap and mm.mode == "r+"
    mm[...] = arr
    mm.flush()
    mm.close()
    assert np.array_equal(np.load(path), arr)
    np.save(tmp_path / "b.npy", arr)
    assert (tmp_path / "a.npy").read_bytes() == (tmp_path / "b.npy").read_bytes()


@pytest.mark.parametrize("mode", ["r", "c", "r+"])
def test_open_memmap_reads_what_numpy_saved(tmp_path, mode):
    path = tmp_path / "a.npy"
    arr = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    np.save(path, arr)
    mm = mmarray.open_memmap(path, mode=mode)
    assert type(mm) is mmarray.memmap
    assert mm.flags.f_contiguous and mm.mode == mode
    assert np.array_equal(mm, arr)
    assert mm.flags.writeable == (mode != "r")


def test_open_memmap_structured_dtype_and_fortran_order_round_trip(tmp_path):
    path = tmp_path / "s.npy"
    dt = np.dtype([("a", "<i4"), ("b", "<f8", (2,))])
    with mmarray.open_memmap(path, mode="w+", dtype=dt, shape=(2, 2), fortran_order=True) as m:
        m["a"] = [[1, 2], [3, 4]]
        m.flush()
    loaded = np.load(path)
    assert loaded.dtype == dt and loaded.flags.f_contiguous
    assert loaded["a"].tolist() == [[1, 2], [3, 4]]


def test_open_memmap_matches_numpy_signature():
    import inspect

    ours = inspect.signature(mmarray.open_memmap)
    theirs = inspect.signature(np.lib.format.open_memmap)
    assert list(ours.parameters) == list(theirs.parameters)
    for name in ours.parameters:
        assert ours.parameters[name].default == theirs.parameters[name].default, name
        assert ours.parameters[name].kind == theirs.parameters[name].kind, name


def _open_memmap_error_cases(tmp_path):
    saved = tmp_path / "ok.npy"
    np.save(saved, np.arange(3))
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not a npy file at all")
    big = tmp_path / "big.npy"
    big_dt = np.dtype([(str(i) * 100, "f8") for i in range(500)])
    with pytest.warns(UserWarning, match="format 2.0"):
        np.save(big, np.zeros(1, dtype=big_dt))

    def with_file_object(om):
        with open(saved, "rb") as f:
            return om(f)

    return {
        "file object": with_file_object,
        "missing file": lambda om: om(tmp_path / "missing.npy", mode="r"),
        "bad magic": lambda om: om(bad, mode="r"),
        "header too large": lambda om: om(big, mode="r"),
        "object dtype": lambda om: om(tmp_path / "o.npy", mode="w+", dtype=object, shape=1),
        "version 1.0 too small": lambda om: om(tmp_path / "v.npy", mode="w+", dtype=big_dt,
                                               shape=1, version=(1, 0)),
        "bad version": lambda om: om(tmp_path / "v2.npy", mode="w+", dtype="i4", shape=1,
                                     version=(9, 0)),
    }


@pytest.mark.parametrize("case", ["file object", "missing file", "bad magic",
                                  "header too large", "object dtype", "version 1.0 too small",
                                  "bad version"])
def test_open_memmap_raises_what_numpy_raises(tmp_path, case):
    make = _open_memmap_error_cases(tmp_path)[case]
    with pytest.raises(Exception) as numpy_error:
        make(np.lib.format.open_memmap)
    with pytest.raises(type(numpy_error.value)):
        make(mmarray.open_memmap)


def test_open_memmap_max_header_size_lets_a_large_header_through(tmp_path):
    path = tmp_path / "big.npy"
    arr = np.ones(2, dtype=[(str(i) * 100, "f8") for i in range(500)])
    with pytest.warns(UserWarning):
        np.save(path, arr)
    mm = mmarray.open_memmap(path, mode="r", max_header_size=200000)
    assert np.array_equal(mm, arr)


def test_memmap_is_mapped_by_the_engine_not_the_mmap_module(path):
    import mmap

    mm = mmarray.memmap(path, mode="w+", shape=8)
    assert isinstance(mmarray.mapping_of(mm), mmarray.Mapping)
    assert not isinstance(mm.base, mmap.mmap)
    assert isinstance(np.memmap(path, mode="r").base, mmap.mmap)


@pytest.mark.parametrize("obj", [mmarray.memmap, mmarray.memmap.flush, mmarray.memmap.close,
                                 mmarray.open_memmap],
                         ids=["memmap", "memmap.flush", "memmap.close", "open_memmap"])
def test_docstring_examples_run(obj):
    # memmap's __module__ is 'mmarray', which hides its methods from doctest's module scan.
    import doctest

    tests = doctest.DocTestFinder(recurse=False).find(obj, globs={})
    assert tests and tests[0].examples
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_memmap_constructor_signature_matches_numpy():
    import inspect

    ours = inspect.signature(mmarray.memmap.__new__)
    theirs = inspect.signature(np.memmap.__new__)
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == \
        [(p.name, p.default, p.kind) for p in theirs.parameters.values()]


def test_memmap_mode_given_as_a_str_subclass_works(path):
    class Mode(str):
        pass

    assert mmarray.memmap(path, mode=Mode("w+"), shape=2).mode == "w+"


_RANDOM_CALLS_SCRIPT = """
import gc, os, pickle, random, sys
import numpy as np
import mmarray

path, seed, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
live = []


def open_one():
    # 'w+' only creates: truncating a file that live mappings use gives SIGBUS on access,
    # with numpy.memmap as with any mmap (see the report); everything else is fair game.
    mode = "w+" if not os.path.exists(path) else rng.choice(["r+", "r", "c"])
    shape = rng.choice([0, 8, (2, 4), 64]) if mode == "w+" else rng.choice([None, 0, 8, (2, 4)])
    try:
        return mmarray.memmap(path, mode=mode, shape=shape, offset=rng.choice([0, 1, 3]))
    except ValueError:  # a shape that does not fit the file in mode 'r'/'c'
        return None


def arrays():
    return [a for a in live if isinstance(a, np.ndarray)]


def step():
    arrs = arrays()
    if rng.random() < 0.15 or not arrs:
        m = open_one()
        if m is not None:
            live.append(m)
        return
    a = rng.choice(arrs)
    mapping = mmarray.mapping_of(a)
    k = rng.randrange(12)
    if k == 0:
        live.append(a[1:] if a.ndim else a)
    elif k == 1:
        live.append(np.asarray(a).T)
    elif k == 2 and isinstance(a, mmarray.memmap):
        a.close(strict=rng.random() < 0.5)
    elif k == 3 and mapping is not None:
        mapping.close(strict=rng.random() < 0.5)
    elif k == 4:
        live.remove(a)
    elif k == 5:
        gc.collect()
    elif k == 6 and a.flags.writeable:
        a[...] = 7
    elif k == 7 and isinstance(a, np.memmap):
        a.flush()
    elif k == 8:
        live.append(pickle.loads(pickle.dumps(a)))
    elif k == 9:
        live.append(memoryview(a))
    elif k == 10:
        np.add(a, 1)
    elif k == 11 and live:
        item = live.pop(rng.randrange(len(live)))
        if isinstance(item, memoryview):
            item.release()


for _ in range(steps):
    try:
        step()
    except (ValueError, BufferError):  # closed mappings, strict closes, read-only writes
        pass
    for x in live:  # every live array and memoryview is still readable
        x.tobytes()
print("ok")
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_random_sequences_of_calls_never_crash(tmp_path, seed):
    src = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [src] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _RANDOM_CALLS_SCRIPT,
                           str(tmp_path / "f.bin"), str(seed), "1500"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ok"



def test_memmap_attributes_sit_in_the_instance_dict_as_numpy_memmaps_do(path):
    # Not in __slots__ (measured ~5% off an open, ~8% off a slice): numpy code copies a
    # memmap's __dict__ (MaskedArray._update_from), assigns __class__ between memmap
    # classes, and mixes memmap with other ndarray subclasses; slots break all three.
    np.arange(4, dtype="int16").tofile(path)
    ours = mmarray.memmap(path, dtype="int16", mode="r")
    theirs = np.memmap(path, dtype="int16", mode="r")
    assert set(vars(ours)) >= {"_mmap", "filename", "offset", "mode"}
    assert set(vars(ours)) >= set(vars(theirs))
    assert np.ma.masked_array(ours, mask=ours > 1).filename == \
        np.ma.masked_array(theirs, mask=theirs > 1).filename == os.path.abspath(path)
    view = theirs[1:]
    view.__class__ = mmarray.memmap  # allowed: the same layout as numpy's memmap
    assert type(view) is mmarray.memmap and view.filename == os.path.abspath(path)

    class Slotted(np.ndarray):
        __slots__ = ("z",)

    class Both(mmarray.memmap, Slotted):  # as numpy.memmap allows
        pass

    assert issubclass(Both, np.memmap)


def test_arrays_that_map_nothing_read_none_attributes_as_numpy_memmap_does(path):
    mm = mmarray.memmap(path, dtype="int16", mode="w+", shape=4)
    theirs = np.memmap(path, dtype="int16", mode="r+", shape=4)
    cow = mmarray.memmap(path, dtype="int16", mode="c", shape=4)
    pairs = [(mm.copy(), theirs.copy()),
             (pickle.loads(pickle.dumps(cow)), pickle.loads(pickle.dumps(theirs))),
             (np.arange(3).view(mmarray.memmap), np.arange(3).view(np.memmap))]
    for ours, numpys in pairs:
        for name in ("_mmap", "filename", "offset", "mode"):
            assert getattr(ours, name) is None
            assert getattr(numpys, name) is None



# A memmap class whose __array_finalize__ keeps the array it is given, then raises: in a
# subclass, and in mmarray.memmap itself with the function replaced (monkeypatched, wrapped).
_KEEPERS = {
    "subclass": "class Keeper(mmarray.memmap):\n"
                "    __array_finalize__ = keep_and_raise\n",
    "replaced on memmap": "mmarray.memmap.__array_finalize__ = keep_and_raise\n"
                          "Keeper = mmarray.memmap\n",
}


@pytest.mark.parametrize("keeper", sorted(_KEEPERS))
def test_finalize_that_keeps_the_array_and_raises_leaves_it_a_mapped_base(path, keeper):
    # The array such a function keeps must hold its export: it had none (the base was set
    # after the call) and read the file once it was unmapped (SIGSEGV). The engine trusts
    # mmarray.memmap's own function only, not its class; other arrays are built base first.
    np.arange(32, dtype="int16").tofile(path)
    script = "import gc, numpy as np, mmarray\nkept = []\n" \
             "def keep_and_raise(self, obj):\n" \
             "    kept.append(self)\n" \
             "    raise RuntimeError('finalize failed')\n" + _KEEPERS[keeper] + f"""
for mode in ("r", "r+", "c", "r", "r+"):  # the general path first, then the fast path
    try:
        Keeper({path!r}, dtype="int16", mode=mode)
    except RuntimeError:
        pass
gc.collect()
assert len(kept) == 5
for a in kept:
    assert a.base is not None
    assert int(a.view(np.ndarray).sum()) == sum(range(32))
print("ok")
"""
    proc = run_python(script, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"

# Ways to make numpy find a function that keeps the array and raises where the engine's
# check of the trusted __array_finalize__ found another (helper-69): a metaclass property
# that answers None once, a metaclass whose classes equal mmarray.memmap, and a gc callback
# that replaces memmap's function while numpy allocates the array.
_TWO_FACED = {
    "metaclass property": """
calls = [0]
class Meta(type):
    @property
    def __array_finalize__(cls):
        calls[0] += 1
        return None if calls[0] % 2 else keep_and_raise
def make(mode):
    class Keeper(np.ndarray, metaclass=Meta):
        pass
    return _engine.array_to_end(Keeper, NAMES, PATH, "int16", mode, 0, None, "C")
""",
    "metaclass equal to memmap": """
class Meta(type):
    def __eq__(cls, other):
        return other is mmarray.memmap or super().__eq__(other)
    def __hash__(cls):
        return hash(mmarray.memmap)
    @property
    def __array_finalize__(cls):
        cls.calls += 1
        return mmarray.memmap.__array_finalize__ if cls.calls % 2 else keep_and_raise
def make(mode):
    class Keeper(mmarray.memmap, metaclass=Meta):
        calls = 0
    return Keeper(PATH, dtype="int16", mode=mode)
""",
    "profile hook in a Python finalize": """
import sys
class Keeper(np.ndarray):
    def __array_finalize__(self, obj):
        pass
_engine.trust_array_finalize(Keeper)  # refused: a Python function (helper-70)
def hook(frame, event, arg):
    if event == "call" and frame.f_code.co_name == "__array_finalize__" \
            and frame.f_locals.get("obj") is None:
        keep_and_raise(frame.f_locals["self"], None)
def make(mode):
    sys.setprofile(hook)
    try:
        return _engine.array_to_end(Keeper, NAMES, PATH, "int16", mode, 0, None, "C")
    finally:
        sys.setprofile(None)
""",
    "gc callback": """
original = mmarray.memmap.__array_finalize__
def swap(phase, info):
    if phase == "start":
        mmarray.memmap.__array_finalize__ = keep_and_raise
def make(mode):
    mmarray.memmap.__array_finalize__ = original
    gc.callbacks.append(swap)
    try:
        return mmarray.memmap(PATH, dtype="int16", mode=mode)
    finally:
        gc.callbacks.remove(swap)
        mmarray.memmap.__array_finalize__ = original
""",
}


@pytest.mark.parametrize("how", sorted(_TWO_FACED))
def test_a_finalize_that_answers_two_ways_cannot_keep_an_array_without_its_base(path, how):
    # Each segfaulted (the kept array had no base, and read its region once unmapped).
    np.arange(32, dtype="int16").tofile(path)
    script = f"""
import gc, numpy as np, mmarray
from mmarray import _engine
PATH = {path!r}
NAMES = ("_mmap", "offset", "mode", "filename")
mmarray.memmap(PATH, dtype="int16", mode="r").flush()  # int16 in the fast path's table
kept = []
def keep_and_raise(self, obj):
    kept.append(self)
    raise RuntimeError("finalize failed")
""" + _TWO_FACED[how] + """
made = 0
for threshold in range(1, 12):  # collections at different allocations of the call
    gc.set_threshold(threshold)
    for mode in ("r", "r+", "c"):
        try:
            made += make(mode) is not None
        except (RuntimeError, TypeError):  # TypeError: numpy calls the None a property gave
            pass
gc.set_threshold(700)
gc.collect()
for a in kept:
    assert a.base is not None
    assert int(a.view(np.ndarray).sum()) == sum(range(32))
print("ok", len(kept), made)
"""
    proc = run_python(script, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split()[0] == "ok", proc.stdout


def test_subclass_memmap_built_by_ndarray_new_matches_the_memmap_itself(path):
    np.arange(32, dtype="int16").tofile(path)
    seen = []

    class Sub(mmarray.memmap):
        def __array_finalize__(self, obj):
            seen.append(obj)
            super().__array_finalize__(obj)

    for mode in ("r", "r+", "c"):
        for _ in range(2):  # the general path, then the fast path
            a = Sub(path, dtype="<i2", mode=mode, shape=(4, 8), order="F")
            b = mmarray.memmap(path, dtype="<i2", mode=mode, shape=(4, 8), order="F")
            assert type(a) is Sub and seen[-1] is None  # numpy's constructor: obj is None
            assert a.strides == b.strides and a.flags.writeable == b.flags.writeable
            assert (a.filename, a.offset, a.mode) == (b.filename, b.offset, b.mode)
            assert np.array_equal(a, b) and a._mmap.exports == 1
            a._mmap.close()
            b.close()


def test_memmap_subclass_with_its_own_metaclass_maps_as_numpy_memmap_does(path):
    import abc

    np.arange(8, dtype="int16").tofile(path)

    class Ours(mmarray.memmap, metaclass=abc.ABCMeta):
        pass

    class Theirs(np.memmap, metaclass=abc.ABCMeta):
        pass

    for _ in range(2):  # the general path, then the fast path
        a, b = Ours(path, dtype="int16", mode="r"), Theirs(path, dtype="int16", mode="r")
        assert type(a) is Ours and a.tolist() == b.tolist() == list(range(8))
        assert a.filename == b.filename
        a.close()
