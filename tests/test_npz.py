"""mmarray.load for .npz archives (members mapped in place), CRC upkeep, and save_npz."""
import collections.abc
import gc
import io
import os
import stat
import struct
import warnings
import zipfile

import numpy as np
import pytest
from numpy.lib import format as npformat

import mmarray
from mmarray import _npzwrite
from _npy_helpers import GIB, npy_bytes, write_npz_with_descriptors, zip64_archive, zip_layout
from helpers import assert_clean_exit, mapped_bytes, mapped_regions, needs_proc_maps, run_python


def savez(tmp_path, name="a.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def check_archive(path):
    """Every zip reader's view: zipfile's CRC check and np.load's arrays."""
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


ARRAYS = {"a": np.arange(12, dtype="<i4").reshape(3, 4), "b": np.linspace(0, 1, 5),
          "f": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "s": np.float32(2.5),
          "e": np.zeros((0, 3)), "rec": np.zeros(3, [("x", "<i2"), ("y", "<f8")])}


# -- reading members in place -----------------------------------------------------------------

@pytest.mark.parametrize("writer", ["savez", "save_npz"])
def test_members_are_what_np_load_gives(tmp_path, writer):
    path = tmp_path / "a.npz"
    (np.savez if writer == "savez" else mmarray.save_npz)(path, **ARRAYS)
    want = check_archive(path)
    with mmarray.load(path) as npz:
        assert isinstance(npz, collections.abc.Mapping)
        assert list(npz) == list(want)
        for k, v in want.items():
            m = npz[k]
            assert isinstance(m, mmarray.Mapping)
            a = m.array
            assert type(a) is np.ndarray and a.dtype == v.dtype and a.shape == v.shape
            np.testing.assert_array_equal(a, v)
            assert m.filename == os.path.abspath(path)


def test_member_offsets_are_where_zipfile_puts_the_data(tmp_path):
    path = savez(tmp_path, **ARRAYS)
    layout = zip_layout(path)
    with mmarray.load(path) as npz:
        for k, v in ARRAYS.items():
            _, data, size, _ = layout[k + ".npy"]
            header = len(npy_bytes(v)) - v.nbytes
            assert npz[k].offset == data + header
            assert size == header + v.nbytes


@needs_proc_maps
def test_member_array_shares_memory_with_the_archive(tmp_path):
    arr = np.arange(100_000, dtype=np.int64)
    path = savez(tmp_path, x=arr, y=np.ones(3))
    with mmarray.load(path, mode="r+") as npz:
        m = npz["x"]
        assert len(mapped_regions(path)) == 1
        assert arr.nbytes <= mapped_bytes(path) <= arr.nbytes + 8192  # in place, not a copy
        m.array[-1] = -5
        m.flush()
        with open(path, "rb") as f:
            f.seek(m.offset + arr.nbytes - 8)
            assert struct.unpack("<q", f.read(8))[0] == -5   # the write is in the archive
    assert check_archive(path)["x"][-1] == -5


def test_mode_r_members_are_read_only_and_mode_c_writes_stay_in_memory(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    before = path.read_bytes()
    with mmarray.load(path) as npz:
        with pytest.raises(ValueError, match="read-only"):
            npz["x"].array[0] = 1
    with mmarray.load(path, mode="c") as npz:
        a = npz["x"].array
        a[0] = 99
        assert npz["x"].array[0] == 99       # one private copy per member
        del a
    assert path.read_bytes() == before


@pytest.mark.parametrize("mode", ["w+", "x"])
def test_npz_bad_modes_are_value_errors(tmp_path, mode):
    path = savez(tmp_path, x=np.arange(4))
    with pytest.raises(ValueError, match="mode"):
        mmarray.load(path, mode=mode)


def test_npz_mapping_interface(tmp_path):
    path = savez(tmp_path, x=np.arange(4), y=np.ones(2))
    npz = mmarray.load(path)
    assert isinstance(npz, mmarray.NpzMapping)
    assert len(npz) == 2 and sorted(npz.keys()) == ["x", "y"]
    assert "x" in npz and "x.npy" in npz and "z" not in npz and [1] not in npz
    assert npz["x.npy"] is npz["x"]            # np.load accepts both spellings; one member
    assert dict(npz.items())["y"] is npz["y"]
    with pytest.raises(KeyError, match="'z' is not a member.*'x', 'y'"):
        npz["z"]
    assert npz.mode == "r" and npz.filename == os.path.abspath(path) and not npz.closed
    assert "x" in repr(npz)
    npz.close()
    assert npz.closed and len(npz) == 2
    with pytest.raises(ValueError, match="closed"):
        npz["x"]
    npz.close()  # idempotent


def test_npz_mapping_is_not_constructed_directly_or_pickled(tmp_path):
    import pickle

    with pytest.raises(TypeError, match="mmarray.load"):
        mmarray.NpzMapping()
    with mmarray.load(savez(tmp_path, x=np.arange(2))) as npz:
        with pytest.raises(TypeError, match="pickle"):
            pickle.dumps(npz)


def test_close_closes_every_member_with_safe_close_rules(tmp_path):
    path = savez(tmp_path, x=np.arange(4), y=np.ones(2))
    with mmarray.load(path) as npz:
        x, y = npz["x"], npz["y"]
        a = x.array
    assert x.closed and y.closed
    assert x.exports == 1 and a.tolist() == [0, 1, 2, 3]   # still mapped for the live array
    del a
    assert x.exports == 0


def test_a_closed_member_is_reopened_on_next_access(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    with mmarray.load(path) as npz:
        first = npz["x"]
        first.close()
        again = npz["x"]
        assert again is not first and not again.closed
        assert again.array.tolist() == [0, 1, 2, 3]


def test_member_close_strict_raises_buffer_error_with_live_arrays(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    with mmarray.load(path, mode="r+") as npz:
        m = npz["x"]
        a = m.array
        with pytest.raises(BufferError):
            m.close(strict=True)
        assert not m.closed
        del a


def test_rows_with_an_npz_is_a_value_error(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    with pytest.raises(ValueError, match="rows=.*applies to .npy"):
        mmarray.load(path, rows=slice(0, 2))


def test_members_that_are_not_npy_are_mapped_as_raw_bytes(tmp_path):
    path = tmp_path / "mixed.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", b"hello")
        zf.writestr("x.npy", npy_bytes(np.arange(3)))
    with np.load(path) as f:
        assert f["notes.txt"] == b"hello"
    with mmarray.load(path) as npz:
        assert sorted(npz) == ["notes.txt", "x"]
        assert npz["notes.txt"].array.tobytes() == b"hello"
        assert npz["x"].array.tolist() == [0, 1, 2]


def test_archive_given_as_a_file_object(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    with open(path, "rb") as f:
        with mmarray.load(f) as npz:
            assert npz["x"].array.tolist() == [0, 1, 2, 3]
            assert npz.filename is None


def test_archive_with_a_comment_and_prepended_bytes(tmp_path):
    inner = savez(tmp_path, x=np.arange(4))
    path = tmp_path / "sfx.npz"
    with zipfile.ZipFile(inner, "a") as zf:
        zf.comment = b"a comment"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 96 + inner.read_bytes())  # like a self-extractor
    with zipfile.ZipFile(path) as zf:
        assert zf.read("x.npy") == npy_bytes(np.arange(4))
    with mmarray.load(path) as npz:
        assert npz["x"].array.tolist() == [0, 1, 2, 3]
        assert npz["x"].offset == 100 + zip_layout(inner)["x.npy"][1] + 128


def test_end_record_signature_inside_the_comment_is_not_taken_for_the_record(tmp_path):
    path = savez(tmp_path, x=np.arange(4))
    with zipfile.ZipFile(path, "a") as zf:
        zf.comment = b"a comment with PK\x05\x06 inside"
    with mmarray.load(path) as npz:          # (zipfile itself gets this one wrong)
        assert npz["x"].array.tolist() == [0, 1, 2, 3]


def test_empty_archive(tmp_path):
    path = savez(tmp_path)
    with mmarray.load(path) as npz:
        assert len(npz) == 0 and list(npz) == []


def test_archive_written_by_zipfile_with_non_ascii_names(tmp_path):
    path = savez(tmp_path, **{"\u00e9t\u00e9": np.arange(3), "dir/x": np.ones(2)})
    with mmarray.load(path) as npz:
        assert sorted(npz) == sorted(np.load(path).files)
        assert npz["\u00e9t\u00e9"].array.tolist() == [0, 1, 2]


# -- compressed members -----------------------------------------------------------------------

def test_compressed_members_warn_once_and_come_back_in_memory(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, **ARRAYS)
    want = check_archive(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        npz = mmarray.load(path)
        for k in npz:
            npz[k]
    assert [w.category for w in caught] == [mmarray.CompressedMemberWarning]
    assert issubclass(mmarray.CompressedMemberWarning, UserWarning)
    assert "6 of 6 members" in str(caught[0].message) and "deflate" in str(caught[0].message)
    with npz:
        for k, v in want.items():
            m = npz[k]
            assert isinstance(m, mmarray.InMemoryMember)
            a = m.array
            assert type(a) is np.ndarray and not a.flags.writeable
            np.testing.assert_array_equal(a, v)
            assert (m.shape, m.dtype, m.nbytes, m.offset, m.mode) == (v.shape, v.dtype,
                                                                      v.nbytes, None, "r")
            assert m.order == ("F" if k == "f" else "C")
            m.flush()
            assert m.resident() == 1.0 and m.exports == 0
    with pytest.raises(ValueError, match="closed"):
        m.array


def test_compressed_member_in_mode_c_is_a_writable_private_copy(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.arange(4))
    with pytest.warns(mmarray.CompressedMemberWarning):
        npz = mmarray.load(path, mode="c")
    with npz:
        a = npz["x"].array
        a[0] = 10
        assert npz["x"].array[0] == 10
    assert np.load(path)["x"][0] == 0


def test_compressed_error_raises_and_ignore_is_silent(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.arange(4))
    with pytest.raises(ValueError, match="compressed.*'x'.*cannot be memory-mapped"):
        mmarray.load(path, compressed="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with mmarray.load(path, compressed="ignore") as npz:
            assert npz["x"].array.tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="compressed must be"):
        mmarray.load(path, compressed="maybe")


def test_archive_mixing_stored_and_compressed_members(tmp_path):
    path = tmp_path / "mixed.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("s.npy", npy_bytes(np.arange(3)), compress_type=zipfile.ZIP_STORED)
        zf.writestr("d.npy", npy_bytes(np.arange(5)), compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("b.npy", npy_bytes(np.arange(2)), compress_type=zipfile.ZIP_BZIP2)
        zf.writestr("l.npy", npy_bytes(np.arange(1)), compress_type=zipfile.ZIP_LZMA)
    with pytest.warns(mmarray.CompressedMemberWarning, match="3 of 4.*bzip2/deflate/lzma"):
        npz = mmarray.load(path)
    with npz:
        assert type(npz["s"]) is mmarray.Mapping
        assert [npz[k].array.tolist() for k in "sdbl"] == [[0, 1, 2], list(range(5)), [0, 1],
                                                          [0]]


def test_corrupt_deflate_data_is_a_value_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.arange(1000))
    data = bytearray(path.read_bytes())
    off = zip_layout(path)["x.npy"][1]
    data[off + 20:off + 40] = b"\xff" * 20
    path.write_bytes(bytes(data))
    with pytest.warns(mmarray.CompressedMemberWarning):
        npz = mmarray.load(path)
    with pytest.raises(ValueError, match="'x'"):
        npz["x"]


# -- CRC-32 upkeep in mode r+ -----------------------------------------------------------------

def test_writes_through_r_plus_keep_the_archive_valid(tmp_path):
    path = savez(tmp_path, x=np.arange(10), y=np.ones((2, 2)))
    with mmarray.load(path, mode="r+") as npz:
        npz["x"].array[:] = 7
        npz["y"].array[0, 0] = -1
    got = check_archive(path)
    assert got["x"].tolist() == [7] * 10 and got["y"][0, 0] == -1


def test_flush_of_an_r_plus_member_updates_the_crc(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    m.array[3] = 33
    m.flush()
    assert check_archive(path)["x"][3] == 33
    layout = zip_layout(path)["x.npy"]
    with open(path, "rb") as f:
        f.seek(layout[0] + 14)
        assert struct.unpack("<L", f.read(4))[0] == layout[3]   # local header agrees
    npz.close()


def test_r_plus_without_writes_leaves_the_archive_byte_identical(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    before = path.read_bytes()
    with mmarray.load(path, mode="r+") as npz:
        npz["x"].array
    assert path.read_bytes() == before


def test_writes_after_a_deferred_close_are_covered_when_the_array_goes(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    npz = mmarray.load(path, mode="r+")
    a = npz["x"].array
    npz.close()                 # member stays mapped for `a`
    a[0] = 123                  # CRC recomputed at close is stale now
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() == "x.npy"
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        np.load(path)["x"]
    del a, npz
    gc.collect()
    assert check_archive(path)["x"][0] == 123


def test_members_never_closed_get_their_crc_fixed_at_exit(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    proc = run_python(f"""
        import mmarray
        npz = mmarray.load({str(path)!r}, mode="r+")
        keep = npz["x"]
        keep.array[2] = 222
    """)
    assert_clean_exit(proc)
    assert check_archive(path)["x"][2] == 222


def test_crc_in_a_data_descriptor_is_updated(tmp_path):
    path = tmp_path / "dd.npz"
    with open(path, "wb") as raw:
        write_npz_with_descriptors(raw, {"x": np.arange(6), "y": np.arange(3)})
    with zipfile.ZipFile(path) as zf:
        assert all(info.flag_bits & 0x08 for info in zf.infolist())   # data descriptors
    with mmarray.load(path, mode="r+") as npz:
        npz["x"].array[:] = 5
    assert check_archive(path)["x"].tolist() == [5] * 6
    data = path.read_bytes()
    new_crc = zip_layout(path)["x.npy"][3]
    assert data.count(b"PK\x07\x08" + struct.pack("<L", new_crc)) == 1


def test_crc_update_refuses_an_archive_replaced_since_load(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    m.array[0] = 1
    kept = tmp_path / "kept.npz"
    os.link(path, kept)  # the loaded file, still reachable once replaced at the path
    os.replace(savez(tmp_path, "other.npz", x=np.zeros(10, int)), path)
    with pytest.raises(ValueError, match="replaced"):
        m.flush()
    with pytest.raises(ValueError, match="replaced"):
        npz.close()
    assert m.closed
    assert check_archive(path)["x"].tolist() == [0] * 10
    # what was written has its CRC-32 in the file that was loaded (rewritten through the
    # descriptor mode 'r+' holds)
    assert check_archive(kept)["x"].tolist() == [1, *range(1, 10)]


def test_reopened_member_writing_back_the_loaded_bytes_keeps_the_crc_valid(tmp_path):
    # Each reopen used to start from the CRC-32 read at load time: writing the original bytes
    # back made the recomputed CRC equal that stale value, so the rewrite was skipped.
    path = savez(tmp_path, x=np.arange(10))
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    m.array[0] = 99
    m.close()
    assert check_archive(path)["x"][0] == 99
    m = npz["x"]
    m.array[0] = 0
    m.close()
    assert check_archive(path)["x"].tolist() == list(range(10))
    npz.close()
    assert check_archive(path)["x"].tolist() == list(range(10))


@pytest.mark.parametrize("descriptor", [False, True], ids=["plain", "data-descriptor"])
def test_any_sequence_of_member_opens_writes_and_closes_keeps_the_crc_valid(tmp_path,
                                                                            descriptor):
    path = tmp_path / "a.npz"
    if descriptor:  # zipfile writes data descriptors when it cannot seek back
        with open(path, "wb") as raw:
            write_npz_with_descriptors(raw, {"x": np.arange(2), "y": np.arange(2)})
    else:
        savez(tmp_path, x=np.arange(2), y=np.arange(2))
    original = np.arange(2)   # few states: the loaded bytes come back often
    want = {"x": original.copy(), "y": original.copy()}
    rng = np.random.default_rng(1)
    npz = mmarray.load(path, mode="r+")
    kept = []      # arrays keeping closed members mapped (only read, never written)
    dirty = set()  # members written since their last flush or close
    for _ in range(150):
        k = "xy"[rng.integers(2)]
        m = npz[k]   # reopens the member if it was closed
        op = rng.integers(6)
        if op < 3:   # often the loaded value back: what hit the skip of a stale CRC
            i = int(rng.integers(2))
            v = int(original[i]) + int(rng.integers(2))
            m.array[i] = v
            want[k][i] = v
            dirty.add(k)
        else:
            if op == 3:
                m.flush()
            else:
                if op == 4:
                    kept.append(m.array)
                m.close()
            dirty.discard(k)
        if kept and rng.integers(4) == 0:
            del kept[0]
            gc.collect()
        if not dirty:
            got = check_archive(path)
            assert {n: a.tolist() for n, a in got.items()} == \
                {n: a.tolist() for n, a in want.items()}
    npz.close()
    kept.clear()
    gc.collect()
    got = check_archive(path)
    assert got["x"].tolist() == want["x"].tolist() and got["y"].tolist() == want["y"].tolist()


@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_member_opened_after_the_archive_was_replaced_is_a_value_error(tmp_path, mode):
    # The directory read at load time described the old file: mapping a member with it on
    # the new one gave garbage, and writes corrupted it (or touched past its end: SIGBUS).
    path = savez(tmp_path, a=np.ones(5), x=np.arange(10))  # x lies elsewhere in the new file
    proc = run_python(f"""
        import numpy as np, mmarray, pytest, zipfile
        path = {str(path)!r}
        npz = mmarray.load(path, {mode!r})
        mmarray.save_npz(path, x=np.arange(10), y=np.full(200, 7))
        before = open(path, "rb").read()
        for key in ("x", "x.npy", "a", "x"):
            with pytest.raises(ValueError) as info:
                npz[key]
            msg = str(info.value)
            assert path in msg and "replaced since it was loaded" in msg, msg
            assert "reload" in msg, msg
        npz.close()
        assert open(path, "rb").read() == before
        assert zipfile.ZipFile(path).testzip() is None
        assert np.load(path)["x"].tolist() == list(range(10))
    """)
    assert_clean_exit(proc)


def test_compressed_member_opened_after_the_archive_was_replaced_is_a_value_error(tmp_path):
    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("b.npy", npy_bytes(np.arange(4)), compress_type=zipfile.ZIP_BZIP2)
    npz = mmarray.load(path, compressed="ignore")
    assert npz["b"].array.tolist() == [0, 1, 2, 3]      # read through zipfile
    npz["b"].close()
    mmarray.save_npz(path, b=np.arange(2))
    with pytest.raises(ValueError, match="replaced since it was loaded"):
        npz["b"]
    npz.close()


@needs_proc_maps
def test_closing_an_r_plus_member_unmaps_it_at_once(tmp_path):
    # The CRC-32 is computed over the member's bytes; taking them as the Mapping's own buffer
    # would defer its unmap until the Mapping object is garbage.
    path = savez(tmp_path, x=np.arange(100_000))
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    m.array[5] = -5
    m.flush()
    assert len(mapped_regions(path)) == 1
    m.close()
    assert mapped_regions(path) == [] and m._mapped_length() == 0
    m2 = npz["x"]
    m2.array[6] = -6
    npz.close()
    assert mapped_regions(path) == [] and m2._mapped_length() == 0
    assert check_archive(path)["x"][5:7].tolist() == [-5, -6]


# -- save_npz ---------------------------------------------------------------------------------

def test_save_npz_output_is_read_by_np_load_and_zipfile(tmp_path):
    path = tmp_path / "s.npz"
    arrays = dict(ARRAYS, strided=np.arange(20)[::3], big_endian=np.arange(3, dtype=">f4"),
                  u=np.array(["ab", "cde"]), b=np.array([True, False]))
    mmarray.save_npz(path, **arrays)
    got = check_archive(path)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == np.shape(v)
        np.testing.assert_array_equal(got[k], v)
    assert got["f"].flags.f_contiguous


def test_save_npz_aligns_every_member_to_64_bytes(tmp_path):
    path = tmp_path / "s.npz"
    arrays = {"k" * n: np.arange(n + 1, dtype=np.float64) for n in range(1, 70, 7)}
    mmarray.save_npz(path, **arrays)
    layout = zip_layout(path)
    with mmarray.load(path) as npz:
        for k, v in arrays.items():
            assert layout[k + ".npy"][1] % 64 == 0
            assert npz[k].offset % 64 == 0
            a = npz[k].array
            assert a.ctypes.data % 64 == 0 and a.flags.aligned
            np.testing.assert_array_equal(a, v)


def test_save_npz_is_reproducible(tmp_path):
    mmarray.save_npz(tmp_path / "1.npz", x=np.arange(5))
    mmarray.save_npz(tmp_path / "2.npz", x=np.arange(5))
    assert (tmp_path / "1.npz").read_bytes() == (tmp_path / "2.npz").read_bytes()


def test_save_npz_to_a_file_object_at_an_offset(tmp_path):
    path = tmp_path / "f.npz"
    with open(path, "wb") as f:
        f.write(b"x" * 10)
        mmarray.save_npz(f, a=np.arange(3))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    with open(path, "rb") as f:
        f.seek(10)                             # np.load and load read from the position
        with mmarray.load(f) as npz:
            assert npz["a"].array.tolist() == [0, 1, 2]
            assert npz["a"].offset % 64 == 0


def test_save_npz_accepts_an_array_named_file(tmp_path):
    mmarray.save_npz(tmp_path / "f.npz", file=np.arange(2))
    assert np.load(tmp_path / "f.npz")["file"].tolist() == [0, 1]


def test_save_npz_refuses_what_cannot_be_mapped(tmp_path):
    with pytest.raises(ValueError, match="objects"):
        mmarray.save_npz(tmp_path / "bad.npz", x=np.array([None]))
    assert os.listdir(tmp_path) == []


def test_save_npz_refuses_unseekable_and_non_file_targets(tmp_path):
    class Pipe(io.RawIOBase):
        def writable(self):
            return True

        def seekable(self):
            return False

        def write(self, b):
            return len(b)

        def tell(self):
            return 0

    with pytest.raises(ValueError, match="seekable"):
        mmarray.save_npz(Pipe(), x=np.arange(2))
    with pytest.raises(TypeError, match="path or a binary file object"):
        mmarray.save_npz(42, x=np.arange(2))


def test_save_npz_failure_leaves_nothing_and_an_existing_file_untouched(tmp_path, monkeypatch):
    path = tmp_path / "s.npz"
    mmarray.save_npz(path, x=np.arange(3))
    before = path.read_bytes()
    os.chmod(path, 0o640)

    def boom(fp, arr, crc):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_npzwrite, "_write_data", boom)
    with pytest.raises(OSError, match="No space"):
        mmarray.save_npz(path, x=np.arange(5))
    assert os.listdir(tmp_path) == ["s.npz"] and path.read_bytes() == before
    monkeypatch.undo()
    mmarray.save_npz(path, x=np.arange(5))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_save_npz_over_a_mapped_archive_keeps_the_old_mapping_valid(tmp_path):
    path = tmp_path / "s.npz"
    mmarray.save_npz(path, x=np.arange(50_000))
    npz = mmarray.load(path)
    a = npz["x"].array
    mmarray.save_npz(path, x=np.arange(2))
    assert a[-1] == 49_999
    del a
    npz.close()


def test_save_npz_uses_zip64_when_sizes_need_it(tmp_path, monkeypatch):
    monkeypatch.setattr(_npzwrite, "_ZIP64_LIMIT", 100)
    monkeypatch.setattr(_npzwrite, "_ZIP_FILECOUNT_LIMIT", 2)
    path = tmp_path / "z64.npz"
    arrays = {f"m{i}": np.arange(30 + i) for i in range(4)}
    mmarray.save_npz(path, **arrays)
    data = path.read_bytes()
    assert b"PK\x06\x06" in data and b"PK\x06\x07" in data    # ZIP64 end record + locator
    with zipfile.ZipFile(path) as zf:
        assert all(zf.getinfo(k + ".npy").extract_version >= 45 for k in arrays)
    got = check_archive(path)
    with mmarray.load(path) as npz:
        for k, v in arrays.items():
            np.testing.assert_array_equal(got[k], v)
            np.testing.assert_array_equal(npz[k].array, v)
            assert npz[k].offset % 64 == 0


# -- ZIP64 archives over 4 GiB ----------------------------------------------------------------

def test_zip64_archive_with_a_member_over_4gib(tmp_path):
    path = tmp_path / "huge.npz"
    n = (4 * GIB + GIB // 2) // 8
    buf = io.BytesIO()
    npformat.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False,
                                          "shape": (n,)})
    small = np.arange(5, dtype=np.int16)
    try:
        where = zip64_archive(path, [("big.npy", buf.getvalue(), n * 8),
                                     ("small.npy", npy_bytes(small)[:-small.nbytes],
                                      small.tobytes())], crc_holes=False)
        if path.stat().st_blocks * 512 > 64 << 20:
            pytest.skip("the filesystem does not keep the file sparse")
        with zipfile.ZipFile(path) as zf:                # the reference reads it as we do
            infos = {i.filename: i for i in zf.infolist()}
            assert infos["big.npy"].file_size == len(buf.getvalue()) + n * 8
            assert infos["small.npy"].header_offset == where[1][0] > 4 * GIB
            assert zf.read("small.npy") == npy_bytes(small)
        with mmarray.load(path) as npz:
            assert npz["big"].shape == (n,)
            assert npz["big"].offset == where[0][1] + len(buf.getvalue())
            assert npz["small"].offset == where[1][1] + len(npy_bytes(small)) - small.nbytes
            assert npz["small"].array.tolist() == [0, 1, 2, 3, 4]
            big = npz["big"].array
            assert big[-1] == 0.0 and big.shape == (n,)
            del big
    finally:
        if path.exists():
            os.unlink(path)


# -- malformed archives -----------------------------------------------------------------------

def _mutate(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(data)] = data
    path.write_bytes(bytes(raw))


def _eocd(path):
    data = path.read_bytes()
    return data.rfind(b"PK\x05\x06")


def _cd_offset(path):
    data = path.read_bytes()
    return struct.unpack_from("<L", data, _eocd(path) + 16)[0]


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / "m.npz"
    mmarray.save_npz(path, x=np.arange(10), y=np.arange(3.0))
    return path


def test_truncated_archive_is_a_value_error(archive):
    archive.write_bytes(archive.read_bytes()[:-30])
    with pytest.raises(ValueError, match="no end-of-central-directory"):
        mmarray.load(archive)


def test_central_directory_pointing_outside_the_file_is_a_value_error(archive):
    _mutate(archive, _eocd(archive) + 16, struct.pack("<L", 10**9))
    with pytest.raises(ValueError, match="points outside the file"):
        mmarray.load(archive)


def test_central_directory_size_past_its_entries_is_a_value_error(archive):
    _mutate(archive, _eocd(archive) + 12, struct.pack("<L", 10**6))
    with pytest.raises(ValueError, match="outside the file|central directory"):
        mmarray.load(archive)


def test_entry_count_larger_than_the_directory_is_a_value_error(archive):
    _mutate(archive, _eocd(archive) + 8, struct.pack("<HH", 9, 9))
    with pytest.raises(ValueError, match="claims 9 entries|central directory"):
        mmarray.load(archive)


def test_member_data_past_the_end_of_file_is_a_value_error(archive):
    cd = _cd_offset(archive)
    # the second entry's sizes: make its data run past the directory and the file
    second = archive.read_bytes().index(b"PK\x01\x02", cd + 4)
    _mutate(archive, second + 20, struct.pack("<LL", 10**6, 10**6))
    with pytest.raises(ValueError, match="runs into the central directory"):
        mmarray.load(archive)


def test_overlapping_members_are_a_value_error(archive):
    cd = _cd_offset(archive)
    second = archive.read_bytes().index(b"PK\x01\x02", cd + 4)
    _mutate(archive, second + 42, struct.pack("<L", 64))   # y's local header inside x's data
    with pytest.raises(ValueError, match="overlap"):
        mmarray.load(archive)


def test_local_extra_field_pushing_data_into_the_next_member_is_a_value_error(archive):
    _mutate(archive, 28, struct.pack("<H", 900))      # x's local extra length
    with mmarray.load(archive) as npz:
        with pytest.raises(ValueError, match="'x'.*runs past offset"):
            npz["x"]
        assert npz["y"].array.tolist() == [0.0, 1.0, 2.0]


def test_local_header_name_mismatch_is_a_value_error(archive):
    _mutate(archive, 30, b"q")
    with mmarray.load(archive) as npz:
        with pytest.raises(ValueError, match="local header names"):
            npz["x"]


def test_bad_local_header_signature_is_a_value_error(archive):
    _mutate(archive, 0, b"PK\x03\x05")
    with pytest.raises(ValueError):   # no longer recognised as a zip at all
        mmarray.load(archive)
    data = archive.read_bytes()
    cd = _cd_offset(archive)
    second = data.index(b"PK\x01\x02", cd + 4)
    lho = struct.unpack_from("<L", data, second + 42)[0]
    _mutate(archive, 0, b"PK\x03\x04")
    _mutate(archive, lho, b"XXXX")
    with mmarray.load(archive) as npz:
        with pytest.raises(ValueError, match="no local file header"):
            npz["y"]


def test_stored_member_with_differing_sizes_is_a_value_error(archive):
    cd = _cd_offset(archive)
    _mutate(archive, cd + 20, struct.pack("<L", 5))
    with pytest.raises(ValueError, match="sizes differ"):
        mmarray.load(archive)


def test_encrypted_member_is_a_value_error_on_access(archive):
    cd = _cd_offset(archive)
    _mutate(archive, cd + 8, struct.pack("<H", 1))
    with mmarray.load(archive) as npz:
        with pytest.raises(ValueError, match="encrypted"):
            npz["x"]


def test_duplicate_member_names_are_a_value_error(tmp_path):
    path = tmp_path / "dup.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", npy_bytes(np.arange(2)))
        zf.writestr("x", npy_bytes(np.arange(3)))
    with pytest.raises(ValueError, match="both named 'x'"):
        mmarray.load(path)


def test_multi_disk_archive_is_a_value_error(archive):
    _mutate(archive, _eocd(archive) + 4, struct.pack("<H", 1))
    with pytest.raises(ValueError, match="several disks"):
        mmarray.load(archive)


def test_end_record_counting_more_members_than_the_directory_holds_is_a_value_error(archive):
    # np.load reads such an archive (zipfile walks the directory, not the count): refused here
    eocd = _eocd(archive)
    count = struct.unpack_from("<H", open(archive, "rb").read(), eocd + 10)[0]
    _mutate(archive, eocd + 8, struct.pack("<HH", count + 40, count + 40))
    with pytest.raises(ValueError, match=f"claims {count + 40} entries"):
        mmarray.load(archive)


def test_zip64_extra_missing_is_a_value_error(archive):
    cd = _cd_offset(archive)
    _mutate(archive, cd + 42, struct.pack("<L", 0xFFFFFFFF))
    with pytest.raises(ValueError, match="no ZIP64 extra field"):
        mmarray.load(archive)


@pytest.fixture
def zip64_file(tmp_path, monkeypatch):
    monkeypatch.setattr(_npzwrite, "_ZIP_FILECOUNT_LIMIT", 0)
    path = tmp_path / "z.npz"
    mmarray.save_npz(path, x=np.arange(4))
    return path


def test_zip64_locator_pointing_past_the_file_is_a_value_error(zip64_file):
    data = zip64_file.read_bytes()
    loc = data.rfind(b"PK\x06\x07")
    _mutate(zip64_file, loc - 56, b"XXXX")                 # no record right before it
    _mutate(zip64_file, loc + 8, struct.pack("<Q", 10**12))
    with pytest.raises(ValueError, match="no ZIP64 end record.*the file has"):
        mmarray.load(zip64_file)


def test_zip64_record_size_inconsistent_with_the_file_is_a_value_error(zip64_file):
    rec = zip64_file.read_bytes().rfind(b"PK\x06\x06")
    _mutate(zip64_file, rec + 4, struct.pack("<Q", 10**9))
    with pytest.raises(ValueError, match="inconsistent ZIP64"):
        mmarray.load(zip64_file)


def test_zip64_directory_offset_past_the_file_is_a_value_error(zip64_file):
    rec = zip64_file.read_bytes().rfind(b"PK\x06\x06")
    _mutate(zip64_file, rec + 48, struct.pack("<Q", 2**40))
    with pytest.raises(ValueError, match="points outside the file"):
        mmarray.load(zip64_file)


def test_zip64_entry_count_inconsistent_with_the_file_is_a_value_error(zip64_file):
    rec = zip64_file.read_bytes().rfind(b"PK\x06\x06")
    _mutate(zip64_file, rec + 24, struct.pack("<QQ", 2**60, 2**60))
    with pytest.raises(ValueError, match="claims"):
        mmarray.load(zip64_file)


def test_member_header_larger_than_the_member_is_a_value_error(tmp_path):
    path = tmp_path / "short.npz"
    data = npy_bytes(np.arange(10))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", data[:-8])
    with pytest.raises(ValueError):
        np.load(path)["x"]
    with mmarray.load(path) as npz:
        with pytest.raises(ValueError, match="holds only 72"):
            npz["x"]


def test_member_with_object_dtype_is_a_value_error_naming_allow_pickle(tmp_path):
    path = savez(tmp_path, x=np.array([1, None], dtype=object))
    with mmarray.load(path) as npz:
        with pytest.raises(ValueError, match="allow_pickle"):
            npz["x"]


@pytest.mark.parametrize("as_file", [False, True])
def test_compressed_warning_points_at_the_callers_line(tmp_path, as_file):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.arange(4))
    with open(path, "rb") as f:
        with pytest.warns(mmarray.CompressedMemberWarning) as caught:
            mmarray.load(f if as_file else path).close()
    assert caught[0].filename == __file__


def test_corrupt_bzip2_member_error_names_the_archive_and_member(tmp_path):
    # bz2's OSError("Invalid data stream") came up bare, naming nothing.
    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("b.npy", npy_bytes(np.arange(4)), compress_type=zipfile.ZIP_BZIP2)
    raw = bytearray(path.read_bytes())
    start = 30 + len(b"b.npy") + int.from_bytes(raw[28:30], "little")
    assert raw[start:start + 3] == b"BZh"
    raw[start:start + 3] = b"XYZ"
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        np.load(path)["b"]
    npz = mmarray.load(path, compressed="ignore")
    with pytest.raises(OSError, match=r"z\.npz.*member 'b'.*cannot decompress \(bzip2\)"):
        npz["b"]
    npz.close()


def test_compressed_member_is_an_array_like_as_a_mapped_member_is(tmp_path):
    """np.asarray(member) was a 0-d object array, member[2:4] a TypeError, and
    dask.array.from_array(member) an AttributeError (no ndim) (helper-59)."""
    path = tmp_path / "zc.npz"
    np.savez_compressed(path, a=np.arange(10).reshape(2, 5))
    with mmarray.load(path, compressed="ignore") as npz:
        member = npz["a"]
        assert type(member).__name__ == "InMemoryMember"
        assert np.asarray(member).tolist() == np.arange(10).reshape(2, 5).tolist()
        assert np.asarray(member, dtype="f8").dtype == np.float64
        assert member[1, 2:4].tolist() == [7, 8] and member.ndim == 2 and len(member) == 2
        assert [row.tolist() for row in member] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
        with pytest.raises(ValueError, match="read-only"):
            member[0, 0] = 5
    with mmarray.load(path, mode="c", compressed="ignore") as npz:
        member = npz["a"]
        member[0, 0] = 5                      # its private copy
        assert member.array[0, 0] == 5
    da = pytest.importorskip("dask.array")
    with mmarray.load(path, compressed="ignore") as npz:
        assert da.from_array(npz["a"], chunks=1).sum().compute() == 45


def test_ctrl_c_interrupts_the_crc_pass_of_an_r_plus_open_between_chunks(tmp_path, monkeypatch):
    # The pass over the member's bytes runs interpreted (setup.py does not compile _npzcrc):
    # a signal's handler then runs between chunks, not once a pass over gigabytes is done.
    import signal
    import time

    from mmarray import _npyformat, _npzcrc

    assert _npzcrc.__file__.endswith(".py")
    path = str(tmp_path / "big.npz")
    np.savez(path, a=np.zeros(64 << 20, dtype=np.uint8))
    monkeypatch.setattr(_npyformat, "CHUNK", 1 << 20)
    npz = mmarray.load(path, mode="r+")
    t0 = time.perf_counter()
    npz["a"].close()  # the whole pass
    whole = time.perf_counter() - t0

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, whole / 20)
        t0 = time.perf_counter()
        with pytest.raises(KeyboardInterrupt):
            npz["a"]
            time.sleep(10)  # not reached when the interrupt lands inside the open
        took = time.perf_counter() - t0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert took < whole / 2, (took, whole)
    member = npz["a"]  # the interrupted open left nothing behind: the next one works
    member.array[:3] = 7
    npz.close()
    with np.load(path) as z:  # the CRC-32 was rewritten: zipfile checks it
        assert z["a"][:4].tolist() == [7, 7, 7, 0]
