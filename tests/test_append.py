"""mmarray.append_npy (issue #12): rows appended to a .npy in place."""
import io
import os

import numpy as np
import pytest
from numpy.lib import format as npformat

import mmarray
from helpers import run_python


def test_append_creates_then_grows_and_np_load_reads_it(tmp_path):
    path = tmp_path / "log.npy"
    expected = []
    for step in range(5):
        rows = np.full((3, 4), step, dtype="f4")
        assert mmarray.append_npy(path, rows) == 3 * (step + 1)
        expected.append(rows)
    assert np.array_equal(np.load(path), np.concatenate(expected))


def test_append_leaves_the_header_length_and_earlier_bytes_alone(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(12, dtype="i8").reshape(3, 4))
    before = path.read_bytes()
    mmarray.append_npy(path, np.arange(8, dtype="i8").reshape(2, 4))
    after = path.read_bytes()
    header = len(before) - 12 * 8
    assert after[header:len(before)] == before[header:]  # the old data, untouched
    assert len(after) == len(before) + 8 * 8
    assert np.load(path).shape == (5, 4)


def test_append_along_the_last_axis_of_a_fortran_order_file(tmp_path):
    path = tmp_path / "f.npy"
    first = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    np.save(path, first)
    assert mmarray.append_npy(path, np.ones((2, 2))) == 5
    got = np.load(path)
    assert got.flags.f_contiguous and np.array_equal(got, np.hstack([first, np.ones((2, 2))]))


def test_readers_that_mapped_the_file_earlier_keep_working(tmp_path):
    path = tmp_path / "r.npy"
    np.save(path, np.arange(1000, dtype="f8"))
    with mmarray.load(path) as m:
        a = m.array
        mmarray.append_npy(path, np.arange(5000, dtype="f8"))
        assert float(a.sum()) == sum(range(1000))
    assert mmarray.load(path).shape == (6000,)


def test_a_header_without_room_is_rewritten_once_with_room(tmp_path):
    path = tmp_path / "tight.npy"
    text = b"{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n"  # no padding
    path.write_bytes(npformat.magic(1, 0) + len(text).to_bytes(2, "little") + text
                     + np.arange(2, dtype="i8").tobytes())
    old_inode = path.stat().st_ino
    before = path.read_bytes()
    with mmarray.load(path) as m:
        kept = m.array       # a live mapping of the file would keep the old one: refused
        with pytest.raises(BufferError, match="another mapping of it is open"):
            mmarray.append_npy(path, np.arange(10**6, dtype="i8"))
        assert kept.tolist() == [0, 1]
    del kept
    assert path.read_bytes() == before
    assert mmarray.append_npy(path, np.arange(10**6, dtype="i8")) == 10**6 + 2
    assert path.stat().st_ino != old_inode
    got = np.load(path)
    assert got[:3].tolist() == [0, 1, 0] and got.size == 10**6 + 2


@pytest.mark.parametrize("rows, error, match", [
    (np.ones((2, 5), "f4"), ValueError, r"expected rows of shape \(n, 4\)"),
    (np.ones((2, 4), "f8"), TypeError, "expected rows of dtype float32"),
    (np.ones(4, "f4"), ValueError, r"expected rows of shape \(n, 4\)"),
    (np.array(3.0, "f4"), ValueError, "0-d"),
    (np.array([None, 1]), TypeError, "Python objects"),
])
def test_bad_rows_are_refused_and_the_file_left_as_it_was(tmp_path, rows, error, match):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 4), "f4"))
    before = path.read_bytes()
    with pytest.raises(error, match=match):
        mmarray.append_npy(path, rows)
    assert path.read_bytes() == before


def test_files_that_are_not_a_growable_npy_are_refused_unchanged(tmp_path):
    npz = tmp_path / "a.npz"
    np.savez(npz, x=np.zeros(3))
    zero_d = tmp_path / "z.npy"
    np.save(zero_d, np.float64(1.0))
    text = tmp_path / "t.npy"
    text.write_bytes(b"hello, not a .npy")
    for path, match in ((npz, r"\.npz"), (zero_d, "0-d"), (text, "not a .npy")):
        before = path.read_bytes()
        with pytest.raises(ValueError, match=match):
            mmarray.append_npy(path, np.zeros(2))
        assert path.read_bytes() == before


def test_a_crash_between_the_data_and_the_header_leaves_a_readable_file(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.arange(10, dtype="i8"))
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        from mmarray import _npyformat

        def die(*args):     # the process ends after the data, before the header write
            os._exit(9)
        _npyformat.pwrite = die
        mmarray.append_npy({str(path)!r}, np.arange(100, 110, dtype="i8"), sync=True)
    """, timeout=60)
    assert proc.returncode == 9, proc.stderr
    assert np.load(path).tolist() == list(range(10))          # the old shape: readable
    assert mmarray.append_npy(path, np.arange(50, 53, dtype="i8")) == 13  # over the leftover
    assert np.load(path).tolist() == [*range(10), 50, 51, 52]
    assert path.stat().st_size == len(path.read_bytes()) and \
        np.load(path, mmap_mode="r").size == 13


def test_appends_by_npy_append_array_and_mmarray_mix_both_ways(tmp_path):
    npa = pytest.importorskip("npy_append_array")
    theirs = tmp_path / "theirs.npy"
    with npa.NpyAppendArray(str(theirs)) as out:
        out.append(np.arange(6, dtype="f8").reshape(3, 2))
    assert mmarray.append_npy(theirs, np.full((2, 2), 7.0)) == 5
    with npa.NpyAppendArray(str(theirs)) as out:
        out.append(np.full((1, 2), 9.0))
    assert np.load(theirs).tolist() == [[0, 1], [2, 3], [4, 5], [7, 7], [7, 7], [9, 9]]

    ours = tmp_path / "ours.npy"
    mmarray.append_npy(ours, np.arange(4, dtype="i4").reshape(2, 2))
    with npa.NpyAppendArray(str(ours)) as out:
        out.append(np.full((3, 2), 5, dtype="i4"))
    assert mmarray.append_npy(ours, np.full((1, 2), 6, dtype="i4")) == 6
    assert np.load(ours).tolist() == [[0, 1], [2, 3], [5, 5], [5, 5], [5, 5], [6, 6]]


def test_append_refuses_a_path_with_a_nul_byte_and_non_paths(tmp_path):
    with pytest.raises(ValueError, match="null"):
        mmarray.append_npy(str(tmp_path / "a\0b.npy"), np.zeros(2))
    with pytest.raises(TypeError, match="path"):
        mmarray.append_npy(3, np.zeros(2))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("dtype, order", [
    ("<f4", "C"), (">i8", "F"), ("<U3", "C"),
    # a field named like the key, and a titled field: the dict, not the text, is what grows
    ([("shape", "<i4"), (("a title", "x"), "<f8")], "C"),
])
def test_grown_header_from_the_written_cache_equals_the_parsed_one(dtype, order):
    from mmarray import _append

    dt = np.dtype(dtype)
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": npformat.dtype_to_descr(dt),
                                          "fortran_order": order == "F", "shape": (3, 4)})
    header = buf.getvalue()
    _append._WRITTEN.clear()
    first = _append._grown_header(header, (5, 4), "f")          # parsed: a miss
    assert first in _append._WRITTEN
    cached = _append._grown_header(first, (9, 4), "f")          # from what it wrote
    _append._WRITTEN.clear()
    parsed = _append._grown_header(first, (9, 4), "f")          # the same, parsed again
    assert cached == parsed
    assert len(cached) == len(header)
    buf = io.BytesIO(cached)
    assert npformat.read_magic(buf) == (1, 0)
    assert npformat.read_array_header_1_0(buf) == ((9, 4), order == "F", dt)


def test_many_appends_read_back_exactly(tmp_path):
    path = tmp_path / "many.npy"
    rows = np.arange(12, dtype=np.int16).reshape(3, 4)
    for i in range(300):
        mmarray.append_npy(path, rows + i)
    got = np.load(path)
    assert got.shape == (900, 4)
    assert (got[-3:] == rows + 299).all() and (got[:3] == rows).all()



@pytest.mark.parametrize("dtype, order", [("<f8", "C"), ([("a", "<i2"), ("b", "S3")], "C"),
                                          ("<i4", "F")])
def test_rows_written_in_short_writes_are_all_written_in_order(tmp_path, monkeypatch,
                                                               dtype, order):
    # pwrite(2) may write less than asked (Linux: at most 0x7ffff000 bytes per call): the
    # rest follows, from where the short write stopped.
    path = tmp_path / "short.npy"
    first = np.zeros((2, 5) if order == "C" else (5, 2), dtype=dtype, order=order)
    np.save(path, first)
    shape = (70, 5) if order == "C" else (5, 70)
    raw = (np.arange(np.dtype(dtype).itemsize * 350) % 251).astype(np.uint8)
    rows = np.asarray(raw.view(dtype).reshape(shape), order=order)
    real = os.pwrite
    pieces = []

    def short(fd, data, pos):
        view = np.frombuffer(data, dtype=np.uint8)
        if len(view) > 200:        # the rows (the trailer and the header are smaller)
            view = view[:7]
            pieces.append(len(view))
        return real(fd, view, pos)
    monkeypatch.setattr(os, "pwrite", short)
    grown = mmarray.append_npy(path, rows)
    monkeypatch.undo()
    assert grown == 72
    assert len(pieces) > 3                                # it did write in short pieces
    axis = 0 if order == "C" else 1
    got = np.load(path)
    assert got.tobytes(order="A") == np.concatenate([first, rows], axis=axis).tobytes(order="A")
    assert np.array_equal(got, np.concatenate([first, rows], axis=axis))
