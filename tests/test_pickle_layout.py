"""References (pickles) of mappings whose place in the file a header gave: a ``.npy``'s data,
a ``.npz`` member. ``np.save`` to the same name rewrites the file in place (same device,
inode and birth time), so the identity check alone let a receiver map the pickled byte range
over another array: reading garbage in mode 'r', and in mode 'r+' writing over the new
header. A reference now carries the header bytes and its receiver refuses a file that no
longer holds them; a pickled ``.npy`` mapping comes back as the class it was."""

import os
import pickle

import numpy as np
import pytest

import mmarray
from mmarray import _mapping


def wide_record_array():
    # Its header is 256 bytes where a float64 vector's is 128: the data moved.
    return np.zeros(8, dtype=[(f"field_{i}", "<f8") for i in range(8)])


def pickle_of(kind, path, mode):
    if kind == "Mapping":
        m = mmarray.load(path, mode=mode)
        payload = pickle.dumps(m)
        m.close()
    elif kind == "ref":
        with mmarray.load(path, mode=mode) as m:
            payload = pickle.dumps(mmarray.ref(m.array[3:10]))
    elif kind == "memmap":
        a = mmarray.open_memmap(path, mode=mode)
        payload = pickle.dumps(a)
        del a
    else:  # a slice of mmarray.memmap over the .npy data (through ref)
        a = mmarray.open_memmap(path, mode=mode)
        payload = pickle.dumps(a[5:])
        del a
    return payload


def reduce_args_of_a_small_npy(tmp_path):
    """(path, _reopen's first eight arguments) for a pickle of a small .npy's mapping."""
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(4.0))
    with mmarray.load(path) as m:
        return path, m.__reduce__()[1][:8]


def unpickled_array(payload):
    got = pickle.loads(payload)
    return got.array if isinstance(got, (mmarray.Mapping, mmarray.ArrayRef)) else got


@pytest.mark.parametrize("kind", ["Mapping", "ref", "memmap", "memmap slice"])
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_pickle_of_npy_refuses_the_file_rewritten_in_place(tmp_path, kind, mode):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(64, dtype="f8"))
    payload = pickle_of(kind, path, mode)
    np.save(path, wide_record_array())  # same inode: os.replace would have been caught
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="changed since it was pickled.*header"):
        unpickled_array(payload)
    assert open(path, "rb").read() == before
    assert np.load(path).shape == (8,)


@pytest.mark.parametrize("kind", ["Mapping", "ref", "memmap", "memmap slice"])
def test_pickle_of_npy_maps_the_unchanged_file(tmp_path, kind):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(64, dtype="f8"))
    got = unpickled_array(pickle_of(kind, path, "r+"))
    expected = np.arange(64.0)[5:] if kind == "memmap slice" else np.arange(64.0)
    np.testing.assert_array_equal(got, expected[3:10] if kind == "ref" else expected)
    del got


def test_pickle_of_npy_rows_refuses_the_file_rewritten_in_place(tmp_path):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(64, dtype="f8").reshape(16, 4))
    with mmarray.load(path, mode="r", rows=(2, 6)) as m:
        payload = pickle.dumps(m)
    np.save(path, wide_record_array())
    with pytest.raises(ValueError, match="changed since it was pickled"):
        pickle.loads(payload)


def test_pickled_npy_mapping_comes_back_resizable_and_keeps_the_header_true(tmp_path):
    # It came back as a plain Mapping: resize(10) meant shape (10,), grew the file without
    # touching the header, and np.load never saw the new rows.
    path = str(tmp_path / "g.npy")
    np.save(path, np.zeros((4, 3)))
    with mmarray.load(path, mode="r+") as m:
        other = pickle.loads(pickle.dumps(m))
        assert type(other) is type(m)
        other.resize(10)
        assert other.shape == (10, 3)
        other.array[4:] = 7
        other.flush()
        other.close()
    got = np.load(path)
    assert got.shape == (10, 3) and (got[4:] == 7).all() and (got[:4] == 0).all()


def test_pickled_rows_mapping_stays_unresizable(tmp_path):
    path = str(tmp_path / "r.npy")
    np.save(path, np.zeros((8, 3)))
    with mmarray.load(path, mode="r+", rows=(2, 5)) as m:
        other = pickle.loads(pickle.dumps(m))
        assert type(other) is type(m)
        with pytest.raises(ValueError, match="some rows"):
            other.resize(3)
        other.close()


def test_pickled_npz_member_refuses_the_archive_rewritten_in_place(tmp_path):
    path = str(tmp_path / "z.npz")
    np.savez(path, a=np.arange(5), b=np.ones(3))
    with mmarray.load(path) as z:
        payload = pickle.dumps(z["b"])
    np.testing.assert_array_equal(pickle.loads(payload).array, np.ones(3))
    np.savez(path, a=np.arange(50), b=np.ones(3))  # member b's bytes moved
    with pytest.raises(ValueError, match="changed since it was pickled"):
        pickle.loads(payload)


def test_pickled_npz_member_survives_a_crc_rewrite_of_its_member(tmp_path):
    # Mode 'r+' rewrites the member's CRC-32 in its local header: the data is where it was.
    path = str(tmp_path / "z.npz")
    mmarray.save_npz(path, a=np.arange(5.0))
    with mmarray.load(path) as z:
        payload = pickle.dumps(z["a"])
    with mmarray.load(path, mode="r+") as z:
        member = z["a"]
        member.array[:] = 9
        member.close()
    np.testing.assert_array_equal(pickle.loads(payload).array, np.full(5, 9.0))
    np.testing.assert_array_equal(np.load(path)["a"], np.full(5, 9.0))


def test_pickle_without_a_layout_still_loads(tmp_path):
    # A pickle made before layouts existed: eight fields.
    path = str(tmp_path / "raw.bin")
    np.arange(4, dtype="<i4").tofile(path)
    with mmarray.open(path, dtype="<i4", mode="r") as m:
        func, args = m.__reduce__()
    assert func is _mapping._reopen and len(args) == 8  # a raw file carries no layout
    with func(*args) as again:
        assert again.array.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("layout, kind, exc, match", [
    ([(0, b"x")], None, TypeError, "layout"),
    (((0, "x"),), None, TypeError, "layout"),
    (((-1, b"x"),), None, TypeError, "layout"),
    (None, "npy", TypeError, "kind"),
    (((0, b"x"),), "bogus", TypeError, "kind"),
    (((0, b"x"),), 3, TypeError, "kind"),
])
def test_forged_layout_or_kind_is_refused_before_mapping(tmp_path, layout, kind, exc, match):
    path, args = reduce_args_of_a_small_npy(tmp_path)
    with pytest.raises(exc, match=match):
        _mapping._reopen(*args, layout, kind)


def test_forged_layout_that_does_not_match_is_refused(tmp_path):
    path, args = reduce_args_of_a_small_npy(tmp_path)
    with pytest.raises(ValueError, match="changed since it was pickled"):
        _mapping._reopen(*args, ((0, b"\x93NUMPY\x09"),), None)
    assert os.path.getsize(path) == 128 + 32


@pytest.mark.parametrize("kind", ["Mapping", "ref", "memmap", "memmap slice"])
def test_pickle_of_npy_still_maps_after_rows_were_appended(tmp_path, kind):
    # append_npy rewrites the header's shape in place: the data did not move, so a reference
    # made before stays valid (byte for byte comparison refused it).
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(64, dtype="f8"))
    payload = pickle_of(kind, path, "r")
    mmarray.append_npy(path, np.arange(64.0, 70.0))
    got = unpickled_array(payload)
    expected = np.arange(64.0)[5:] if kind == "memmap slice" else np.arange(64.0)
    np.testing.assert_array_equal(got, expected[3:10] if kind == "ref" else expected)
    del got


@pytest.mark.parametrize("order", ["C", "F"])
def test_pickle_of_npy_rows_survives_a_grow_and_refuses_a_shrink_below_it(tmp_path, order):
    path = str(tmp_path / "g.npy")
    data = np.arange(40.0).reshape(8, 5) if order == "C" else np.asfortranarray(
        np.arange(40.0).reshape(5, 8))
    np.save(path, data)
    with mmarray.load(path, mode="r", rows=(4, 6)) as m:
        payload = pickle.dumps(m)
        expected = m.array.copy()
    with mmarray.load(path, mode="r+") as m:
        m.resize(10)
    with pickle.loads(payload) as again:
        np.testing.assert_array_equal(again.array, expected)
    with mmarray.load(path, mode="r+") as m:
        m.resize(5)               # rows 4 and 5 no longer in the header (bytes still there)
    with pytest.raises(ValueError, match="data ends at byte"):
        pickle.loads(payload)


def test_pickle_of_npy_refuses_another_dtype_in_a_header_of_the_same_length(tmp_path):
    path = str(tmp_path / "d.npy")
    np.save(path, np.arange(64, dtype="<f8"))
    with mmarray.load(path) as m:
        payload = pickle.dumps(m)
    np.save(path, np.arange(64, dtype="<i8"))  # the same header length, the same size
    with pytest.raises(ValueError, match="int64"):
        pickle.loads(payload)


def test_pickle_of_an_empty_rows_mapping_comes_back(tmp_path):
    # rows past the end give a mapping of no byte: it pickled as kind 'npy_rows' without a
    # layout, which the receiver refused as forged (a multiprocessing.Pool then hung).
    path = str(tmp_path / "e.npy")
    np.save(path, np.arange(10.0))
    with mmarray.load(path, mode="r+", rows=(12, 16)) as m:
        again = pickle.loads(pickle.dumps(m))
    assert again.shape == (0,)
    again.close()


def test_header_too_large_for_a_reference_is_refused_when_pickled(tmp_path, monkeypatch):
    from mmarray import _fileref
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(4.0))
    monkeypatch.setattr(_fileref, "LAYOUT_MAX", 64)  # the header is 128 bytes
    with mmarray.load(path) as m:
        with pytest.raises(ValueError, match="over 64 bytes"):
            pickle.dumps(m)


def test_pickle_of_a_header_that_cannot_be_read_says_so(tmp_path, monkeypatch):
    # It said the file was "replaced or renamed" (a read that failed, e.g. EACCES after a
    # chmod: root here ignores permissions, so the read is made to fail).
    from mmarray import _fileref

    def denied(filename, spans):
        raise PermissionError(13, "Permission denied", filename)

    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(4.0))
    with mmarray.load(path) as m:
        monkeypatch.setattr(_fileref, "_read_spans", denied)
        with pytest.raises(ValueError, match=r"cannot be read now \(Permission denied\)"):
            pickle.dumps(m)


def test_forged_layout_past_the_largest_offset_is_a_mismatch(tmp_path):
    path, args = reduce_args_of_a_small_npy(tmp_path)
    with pytest.raises(ValueError, match="are not those pickled"):
        _mapping._reopen(*args, ((2**63 - 2, b"x"),), None)


def test_second_pickle_reuses_the_header_read_by_the_first(tmp_path, monkeypatch):
    from mmarray import _fileref
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(8.0))
    reads = []
    real = _fileref.read_layout
    monkeypatch.setattr(_fileref, "read_layout", lambda *a: reads.append(a) or real(*a))
    with mmarray.load(path) as m:
        first, second = pickle.dumps(m), pickle.dumps(m)
    assert len(reads) == 1 and first == second
    np.testing.assert_array_equal(pickle.loads(second).array, np.arange(8.0))


def test_pickle_after_a_resize_that_moved_the_data_reads_the_new_header(tmp_path):
    # A header without room is rewritten with room (a new file, the data moved): the
    # header read for an earlier pickle is not reused.
    path = str(tmp_path / "a.npy")
    text = b"{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }\n"  # no padding
    header = b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
    header_length = len(header)
    with open(path, "wb") as f:
        f.write(header + np.arange(4.0).tobytes())
    assert np.load(path).tolist() == [0.0, 1.0, 2.0, 3.0]
    with mmarray.load(path, mode="r+") as m:
        pickle.dumps(m)
        m.resize(10**6)
        assert m.offset != header_length  # moved
        again = pickle.loads(pickle.dumps(m))
        assert again.shape == (10**6,) and again.array[3] == 3.0
        again.close()


def save_wide_records(f):
    np.save(f, wide_record_array())


def savez_over(f):
    with open(f, "r+b") as out:  # in place, as a zip
        np.savez(out, x=np.arange(200.0))


@pytest.mark.parametrize("rewrite, match", [
    # The header was read at pickle time and sent as it was: the new file's header with the
    # old range, which the receiver then found unchanged and mapped (over the new header).
    (save_wide_records, "rewritten in place since it was mapped"),
    # The sender's check was chosen by the magic of the bytes read now: a .npy rewritten in
    # place as a zip or raw data was checked by nobody, and a receiver in mode 'r+' wrote
    # over the archive.
    (savez_over, "no longer a whole .npy header"),
])
@pytest.mark.parametrize("kind", ["Mapping", "ref"])
@pytest.mark.parametrize("mode", ["r", "r+"])
def test_npy_rewritten_in_place_before_the_first_pickle_is_refused_by_the_sender(
        tmp_path, kind, mode, rewrite, match):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(100.0))
    with mmarray.load(path, mode=mode) as m:
        rewrite(path)
        before = open(path, "rb").read()
        with pytest.raises(ValueError, match=match):
            pickle.dumps(m if kind == "Mapping" else mmarray.ref(m.array))
    assert open(path, "rb").read() == before


def test_npy_rewritten_with_the_same_header_length_but_another_dtype_is_refused_by_the_sender(
        tmp_path):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(64, dtype="<f8"))
    with mmarray.load(path) as m:
        np.save(path, np.arange(64, dtype="<i8"))
        with pytest.raises(ValueError, match="int64"):
            pickle.dumps(m)


def test_npz_member_of_an_archive_rewritten_before_the_first_pickle_is_refused(tmp_path):
    path = str(tmp_path / "z.npz")
    np.savez(path, a=np.arange(5), b=np.ones(3))
    with mmarray.load(path) as z:
        member = z["b"]
        np.savez(path, a=np.arange(50), b=np.ones(3))  # in place: b's bytes moved
        payload = pickle.dumps(member)                  # the headers read at open travel
        with pytest.raises(ValueError, match="changed since it was pickled"):
            pickle.loads(payload)
        member.close()


def test_a_receiver_pickling_on_sends_the_header_it_checked(tmp_path):
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(10, dtype="f8"))
    with mmarray.load(path) as m:
        first = pickle.loads(pickle.dumps(m))
    np.save(path, wide_record_array())
    onward = pickle.dumps(first)   # the checked header, not the file's new one
    first.close()
    with pytest.raises(ValueError, match="changed since it was pickled"):
        pickle.loads(onward)


def test_npz_member_with_a_long_extra_field_pickles_its_whole_headers(tmp_path):
    # The headers a member sends are read at open; a local extra field longer than the
    # first read is read on its own.
    import struct
    import zipfile

    from _npy_helpers import npy_bytes
    path = str(tmp_path / "x.npz")
    info = zipfile.ZipInfo("b.npy")
    info.extra = struct.pack("<HH", 0xCAFE, 9000) + bytes(9000)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(info, npy_bytes(np.arange(6.0)))
    with mmarray.load(path) as z:
        member = z["b"]
        payload = pickle.dumps(member)
        member.close()
    got = pickle.loads(payload)
    np.testing.assert_array_equal(got.array, np.arange(6.0))
    got.close()


def test_an_array_ref_passed_on_by_its_receiver_carries_the_header_it_checked(tmp_path):
    # The array an ArrayRef comes back as lies on a uint8 Mapping of its bytes, which had no
    # layout: ref() of it carried none, and the next process mapped without any check.
    path = str(tmp_path / "a.npy")
    np.save(path, np.arange(100.0))
    with mmarray.load(path) as m:
        received = np.asarray(pickle.loads(pickle.dumps(mmarray.ref(m.array[10:50]))))
    onward = pickle.dumps(mmarray.ref(received))
    del received
    with open(path, "r+b") as f:
        np.save(f, np.arange(100, dtype="<i4").reshape(10, 10))
    with pytest.raises(ValueError, match="changed since it was pickled"):
        np.asarray(pickle.loads(onward))
