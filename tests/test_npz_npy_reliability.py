"""Reliability of .npy/.npz handling (issue #8): the CRC-32 write-back of mode 'r+', sizes
and shapes that overflowed, file objects and paths given to load, durable replacement."""
import errno
import gc
import io
import os
import stat
import struct
import subprocess
import sys
import threading
import zipfile
import zlib

import numpy as np
import pytest

import mmarray
from _npy_helpers import npy_bytes, npy_header, write_npz_with_descriptors, zip_layout
from helpers import assert_clean_exit, run_python
from test_npz import check_archive, savez


def write_archive(path, descriptor, **arrays):
    """np.savez's archive, or zipfile's with data descriptors (CRC-32 and sizes after the
    data, flag bit 3)."""
    if descriptor:
        with open(path, "wb") as raw:
            write_npz_with_descriptors(raw, arrays)
    else:
        np.savez(path, **arrays)
    return path


def records(path, member):
    """Offsets of ``member``'s local header, central directory entry, data, data end."""
    lho, data, size, _ = zip_layout(path)[member]
    raw = path.read_bytes()
    eocd = raw.rfind(b"PK\x05\x06")
    pos = struct.unpack_from("<L", raw, eocd + 16)[0]
    while raw[pos:pos + 4] == b"PK\x01\x02":
        nlen, elen, clen = struct.unpack_from("<3H", raw, pos + 28)
        if raw[pos + 46:pos + 46 + nlen] == member.encode():
            return {"local": lho, "cd": pos, "data": data, "dd": data + size}
        pos += 46 + nlen + elen + clen
    raise AssertionError(f"{member} not in the central directory")


def flip_bit(path, pos):
    """Change one byte of the file in place (same inode, as an in-place rewrite does)."""
    with open(path, "r+b") as f:
        f.seek(pos)
        byte = f.read(1)[0]
        f.seek(pos)
        f.write(bytes([byte ^ 1]))


def stored_crcs(path, member):
    """The CRC-32 in the central directory and the local header, and the member's real one."""
    at = records(path, member)
    raw = path.read_bytes()
    return (struct.unpack_from("<L", raw, at["cd"] + 16)[0],
            struct.unpack_from("<L", raw, at["local"] + 14)[0],
            zlib.crc32(raw[at["data"]:at["dd"]]))


# -- A. CRC-32 write-back in mode r+ ----------------------------------------------------------

@pytest.mark.parametrize("descriptor", [False, True], ids=["plain", "data-descriptor"])
def test_crc_writeback_skips_an_archive_rewritten_in_place(tmp_path, descriptor):
    path = write_archive(tmp_path / "a.npz", descriptor, x=np.arange(10), y=np.ones(3))
    npz = mmarray.load(path, mode="r+")
    a = npz["x"].array
    npz.close()               # `a` keeps the member mapped: its finalizer updates the CRC-32
    a[0] = 123
    inode = os.stat(path).st_ino
    np.savez(path, y=np.arange(100) * 7, x=np.zeros(50))   # truncates and rewrites in place
    assert os.stat(path).st_ino == inode                   # the identity check cannot tell
    rewritten = path.read_bytes()
    with pytest.warns(RuntimeWarning, match="CRC-32 is not updated") as caught:
        del a
        gc.collect()
    msg = str(caught[0].message)
    assert str(path) in msg and "'x'" in msg and "rewritten" in msg
    assert path.read_bytes() == rewritten
    got = check_archive(path)
    assert got["y"].tolist() == list(range(0, 700, 7)) and got["x"].tolist() == [0] * 50


def test_crc_writeback_of_a_live_member_after_the_archive_shrank_in_place_does_not_crash(
        tmp_path):
    # Computing the CRC-32 over the live mapping of a truncated file would SIGBUS: the check
    # comes first. flush() says the write of -1 is lost (the file no longer reaches it)
    # before any CRC-32 work; close() warns that the CRC-32 was not updated.
    path = savez(tmp_path, x=np.arange(200_000))
    proc = run_python(f"""
        import numpy as np, mmarray, pytest, zipfile
        path = {str(path)!r}
        npz = mmarray.load(path, mode="r+")
        m = npz["x"]
        m.array[-1] = -1
        np.savez(path, x=np.arange(3))             # 1.6 MB -> a few hundred bytes, in place
        rewritten = open(path, "rb").read()
        with pytest.raises(mmarray.MappedFileError, match="past the end of the file"):
            m.flush()
        with pytest.warns(RuntimeWarning, match="not updated"):
            npz.close()
        assert open(path, "rb").read() == rewritten
        assert zipfile.ZipFile(path).testzip() is None
        assert np.load(path)["x"].tolist() == [0, 1, 2]
    """, timeout=120)
    assert_clean_exit(proc)


# (record, offset in it, kinds of archive where a change there must stop the write-back)
FIELDS = [
    ("local", 0, "both"), ("local", 6, "both"), ("local", 8, "both"),   # signature, flags, method
    ("local", 18, "plain"), ("local", 22, "plain"),    # sizes (deferred to the descriptor)
    ("local", 28, "both"), ("local", 30, "both"),      # extra length, name
    ("cd", 0, "both"), ("cd", 8, "both"), ("cd", 10, "both"), ("cd", 20, "both"),
    ("cd", 24, "both"), ("cd", 42, "both"), ("cd", 46, "both"),  # ..., offset, name
    ("dd", 0, "descriptor"), ("dd", 8, "descriptor"), ("dd", 12, "descriptor"),
    ("local", 10, "neither"), ("cd", 12, "neither"),   # timestamps: the member is still there
]


FIELD_CASES = [(d, *field) for d in (False, True) for field in FIELDS
               if d or field[0] != "dd"]


@pytest.mark.parametrize("descriptor, record, offset, refused", FIELD_CASES,
                         ids=[f"{'dd' if d else 'plain'}-{r}+{o}" for d, r, o, _ in FIELD_CASES])
def test_crc_writeback_checks_each_field_that_places_the_member(tmp_path, descriptor, record,
                                                                offset, refused):
    path = write_archive(tmp_path / "a.npz", descriptor, x=np.arange(10), y=np.arange(4))
    at = records(path, "x.npy")
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    m.array[0] = 55
    flip_bit(path, at[record] + offset)
    if refused in ("both", "descriptor" if descriptor else "plain"):
        changed = path.read_bytes()
        with pytest.warns(RuntimeWarning, match="not updated") as caught:
            m.flush()
        assert str(path) in str(caught[0].message) and "'x'" in str(caught[0].message)
        assert path.read_bytes() == changed
        with pytest.warns(RuntimeWarning, match="not updated"):
            npz.close()
        assert path.read_bytes() == changed
    else:
        m.flush()
        npz.close()
        cd, local, real = stored_crcs(path, "x.npy")
        assert cd == real and (local == real or descriptor)
        assert check_archive(path)["x"][0] == 55


def test_crc_writeback_refuses_an_archive_truncated_before_the_members_end(tmp_path):
    path = savez(tmp_path, y=np.ones(3), x=np.arange(10))
    end = records(path, "x.npy")["dd"]
    npz = mmarray.load(path, mode="r+")
    a = npz["x"].array
    npz.close()
    os.truncate(path, end - 1)
    with pytest.warns(RuntimeWarning, match="not updated"):
        del a
        gc.collect()
    assert path.stat().st_size == end - 1


@pytest.mark.parametrize("when", ["first open", "reopen"])
def test_r_plus_member_opened_after_an_in_place_rewrite_is_a_value_error(tmp_path, when):
    path = savez(tmp_path, x=np.arange(10), y=np.ones(3))
    npz = mmarray.load(path, mode="r+")
    if when == "reopen":
        npz["x"].close()
    np.savez(path, y=np.arange(100) * 7, x=np.zeros(50))
    rewritten = path.read_bytes()
    with pytest.raises(ValueError, match="rewritten in place since it was loaded") as info:
        npz["x"]
    assert str(path) in str(info.value) and "reload" in str(info.value)
    npz.close()
    assert path.read_bytes() == rewritten


def rewrite_with_the_same_layout(path, descriptor):
    """Rewrite the archive of ``x = arange(4)`` in place with ``x`` as float64: same inode,
    same sizes and offsets, only the .npy header (its descr) and the data differ."""
    layout = {k: v[:3] for k, v in zip_layout(path).items()}
    inode = os.stat(path).st_ino
    write_archive(path, descriptor, x=np.arange(4, dtype=np.float64))
    assert os.stat(path).st_ino == inode
    assert {k: v[:3] for k, v in zip_layout(path).items()} == layout
    return path.read_bytes()


@pytest.mark.parametrize("how", ["flush", "close"])
@pytest.mark.parametrize("descriptor", [False, True], ids=["plain", "data-descriptor"])
def test_crc_writeback_skips_an_archive_rewritten_in_place_with_the_same_layout(tmp_path,
                                                                                descriptor,
                                                                                how):
    # The zip records still place the member: only its .npy header tells the rewrite.
    path = write_archive(tmp_path / "a.npz", descriptor, x=np.arange(4, dtype=np.int64))
    npz = mmarray.load(path, mode="r+")
    m = npz["x"]
    rewritten = rewrite_with_the_same_layout(path, descriptor)
    if how == "flush":
        with pytest.warns(RuntimeWarning, match="not updated") as caught:
            m.flush()
        assert str(path) in str(caught[0].message) and "'x'" in str(caught[0].message)
        assert path.read_bytes() == rewritten
    with pytest.warns(RuntimeWarning, match="not updated") as caught:
        npz.close()
    assert str(path) in str(caught[0].message) and "'x'" in str(caught[0].message)
    assert path.read_bytes() == rewritten
    assert check_archive(path)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("mode", ["r", "c", "r+"])
@pytest.mark.parametrize("descriptor", [False, True], ids=["plain", "data-descriptor"])
def test_member_first_opened_after_a_same_layout_rewrite_is_a_value_error(tmp_path,
                                                                          descriptor, mode):
    # load() read the .npy header with the directory; the file's says float64 now.
    path = write_archive(tmp_path / "a.npz", descriptor, x=np.arange(4, dtype=np.int64))
    npz = mmarray.load(path, mode=mode)
    rewritten = rewrite_with_the_same_layout(path, descriptor)
    with pytest.raises(ValueError, match="rewritten in place since it was loaded") as info:
        npz["x"]
    assert str(path) in str(info.value) and "reload" in str(info.value)
    npz.close()
    assert path.read_bytes() == rewritten
    with mmarray.load(path, mode=mode) as npz:       # reloaded: the file's dtype
        assert npz["x"].dtype == np.float64 and npz["x"].array.tolist() == [0, 1, 2, 3]
    assert check_archive(path)["x"].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_compressed_member_first_opened_after_an_in_place_rewrite_is_a_value_error(tmp_path,
                                                                                   mode):
    # load() read the compressed bytes with the directory: they are not the file's now.
    path = tmp_path / "z.npz"
    np.savez_compressed(path, x=np.arange(100))
    npz = mmarray.load(path, mode=mode, compressed="ignore")
    flip_bit(path, records(path, "x.npy")["data"] + 20)
    with pytest.raises(ValueError, match="rewritten in place since it was loaded") as info:
        npz["x"]
    assert str(path) in str(info.value) and "reload" in str(info.value)
    npz.close()


def test_two_r_plus_handles_writing_one_member_leave_a_valid_archive(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    first, second = mmarray.load(path, mode="r+"), mmarray.load(path, mode="r+")
    a, b = first["x"], second["x"]
    a.array[0] = 99
    a.close()
    assert check_archive(path)["x"][0] == 99
    b.array[0] = 0       # the loaded bytes again: the CRC-32 `second` last saw is right again
    b.close()
    assert check_archive(path)["x"].tolist() == list(range(10))
    first.close()
    second.close()
    assert check_archive(path)["x"].tolist() == list(range(10))


def test_two_r_plus_handles_closing_one_member_at_once_leave_the_last_ones_crc(tmp_path):
    # The first handle's update is held after computing its CRC-32, before writing it; the
    # second then writes data and closes: it must wait, and compute after the first wrote.
    path = savez(tmp_path, x=np.arange(1000))
    proc = run_python(f"""
        import threading, zipfile, numpy as np, mmarray
        from mmarray import _npzcrc
        path = {str(path)!r}
        computed, resume, closer = threading.Event(), threading.Event(), None
        stored = _npzcrc._Crc.stored

        def held(self, fd):          # called once the CRC-32 is computed, before writing it
            if threading.current_thread() is closer:
                computed.set()
                assert resume.wait(60)
            return stored(self, fd)

        _npzcrc._Crc.stored = held
        first, second = mmarray.load(path, mode="r+"), mmarray.load(path, mode="r+")
        a, b = first["x"], second["x"]
        a.array[0] = -1
        closer = threading.Thread(target=first.close)
        closer.start()
        assert computed.wait(60)
        b.array[1] = -2              # after the first handle computed its CRC-32
        other = threading.Thread(target=second.close)
        other.start()
        other.join(1.0)
        assert other.is_alive(), "the second handle's update did not wait for the first's"
        resume.set()
        closer.join(60)
        other.join(60)
        assert zipfile.ZipFile(path).testzip() is None
        assert np.load(path)["x"][:3].tolist() == [-1, -2, 2]
    """, timeout=120)
    assert_clean_exit(proc)


def test_second_r_plus_handle_opening_a_member_the_first_rewrote_is_not_refused(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    first, second = mmarray.load(path, mode="r+"), mmarray.load(path, mode="r+")
    first["x"].array[0] = 99
    first.close()        # the CRC-32 changed since `second` read the directory
    m = second["x"]
    m.array[1] = 7
    second.close()
    assert check_archive(path)["x"].tolist() == [99, 7] + list(range(2, 10))


# where the damage is -> position in the member's records
CORRUPTIONS = {"data": ("data", 200), "local CRC": ("local", 14), "directory CRC": ("cd", 16)}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
@pytest.mark.parametrize("descriptor", [False, True], ids=["plain", "data-descriptor"])
def test_r_plus_refuses_a_member_whose_stored_crc_does_not_match_its_data(tmp_path,
                                                                          corruption,
                                                                          descriptor):
    if corruption == "local CRC" and descriptor:
        corruption, (record, offset) = "descriptor CRC", ("dd", 4)
    else:
        record, offset = CORRUPTIONS[corruption]
    path = write_archive(tmp_path / "a.npz", descriptor, x=np.arange(100), y=np.ones(3))
    flip_bit(path, records(path, "x.npy")[record] + offset)
    damaged = path.read_bytes()
    npz = mmarray.load(path, mode="r+")
    with pytest.raises(ValueError, match="bad CRC-32") as info:
        npz["x"]
    msg = str(info.value)
    cd, _, real = stored_crcs(path, "x.npy")
    assert str(path) in msg and "'x'" in msg and "mode 'r'" in msg
    assert f"{cd:#010x}" in msg and f"{real:#010x}" in msg
    npz["y"].array[0] = 2       # the intact member is writable
    npz.close()
    after = path.read_bytes()
    at = records(path, "y.npy")
    assert after[:at["local"]] == damaged[:at["local"]]        # x's bytes untouched
    start = records(path, "x.npy")["dd"] - 800
    with mmarray.load(path) as npz:                             # mode 'r' maps it as it is
        assert npz["x"].array.tobytes() == damaged[start:start + 800]


def test_flush_then_os_exit_leaves_an_archive_np_load_accepts(tmp_path):
    path = savez(tmp_path, x=np.arange(1000), y=np.ones(3))
    proc = run_python(f"""
        import os, mmarray
        npz = mmarray.load({str(path)!r}, mode="r+")
        m = npz["x"]
        m.array[::7] = -3
        m.flush()
        os._exit(0)                  # no close, no finalizer, no atexit
    """, timeout=120)
    assert_clean_exit(proc)
    want = np.arange(1000)
    want[::7] = -3
    assert check_archive(path)["x"].tolist() == want.tolist()


def test_a_crash_before_flush_leaves_a_stale_crc_that_r_plus_refuses_and_r_reads(tmp_path):
    # What the README's safety notes say about a crash before flush()/close().
    path = savez(tmp_path, x=np.arange(1000))
    proc = run_python(f"""
        import os, mmarray
        npz = mmarray.load({str(path)!r}, mode="r+")
        npz["x"].array[5] = -5
        os._exit(0)
    """, timeout=120)
    assert_clean_exit(proc)
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        np.load(path)["x"]
    with pytest.raises(ValueError, match="bad CRC-32"):
        mmarray.load(path, mode="r+")["x"]
    with mmarray.load(path) as npz:
        assert npz["x"].array[5] == -5


@pytest.mark.skipif(not hasattr(os, "register_at_fork"), reason="needs os.fork")
def test_fork_while_another_thread_holds_a_crc_lock_does_not_hang_the_child(tmp_path):
    path = savez(tmp_path, x=np.arange(10))
    proc = run_python(f"""
        import os, sys, threading, time, zipfile, mmarray
        npz = mmarray.load({str(path)!r}, mode="r+")
        m = npz["x"]
        m.array[0] = 5          # never closed: the child's exit runs its CRC-32 update
        held, release = threading.Event(), threading.Event()

        def hold():
            with m._crc.lock:
                held.set()
                release.wait()

        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)
        release.set()
        t.join()
        deadline = time.monotonic() + 30
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                sys.exit("the forked child hung at exit on the CRC-32 lock")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status) == 0, status
        npz.close()
        assert zipfile.ZipFile({str(path)!r}).testzip() is None
    """, timeout=120)
    assert_clean_exit(proc)


# -- B. sizes and shapes that overflowed ------------------------------------------------------

def deflated_zip64(path, payload, usize=None, csize=None):
    """One deflated member ``x.npy`` whose sizes are in ZIP64 extra fields (local and
    central), claiming ``usize``/``csize`` instead of the real sizes if given."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = packer.compress(payload) + packer.flush()
    usize = len(payload) if usize is None else usize
    csize = len(data) if csize is None else csize
    crc, raw = zlib.crc32(payload), b"x.npy"
    extra = struct.pack("<HHQQ", 1, 16, usize, csize)
    with open(path, "wb") as f:
        f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                            0xFFFFFFFF, len(raw), len(extra)) + raw + extra + data)
        cd_offset = f.tell()
        f.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45 | (3 << 8), 45, 0, 8, 0, 0x21,
                            crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra), 0, 0, 0, 0,
                            0) + raw + extra)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, f.tell() - cd_offset,
                            cd_offset, 0))
    return path


def test_deflated_zip64_member_with_its_true_sizes_is_read(tmp_path):
    path = deflated_zip64(tmp_path / "z.npz", npy_bytes(np.arange(50)))
    with zipfile.ZipFile(path) as zf:
        assert zf.testzip() is None
    with mmarray.load(path, compressed="ignore") as npz:
        assert npz["x"].array.tolist() == list(range(50))


@pytest.mark.parametrize("field, value", [("usize", 2**63), ("usize", 2**64 - 1),
                                          ("usize", sys.maxsize), ("csize", 2**63),
                                          ("csize", 2**64 - 1)])
def test_deflated_member_with_a_zip64_size_past_2_63_is_a_value_error(tmp_path, field, value):
    path = deflated_zip64(tmp_path / "z.npz", npy_bytes(np.arange(50)), **{field: value})
    with pytest.raises(ValueError) as info:       # OverflowError before
        mmarray.load(path, compressed="ignore")["x"]
    msg = str(info.value)
    assert str(path) in msg and "'x.npy'" in msg and str(value) in msg


def test_deflated_member_claiming_the_largest_allocatable_size_fails_on_its_data(tmp_path):
    path = deflated_zip64(tmp_path / "z.npz", npy_bytes(np.arange(50)), usize=sys.maxsize - 1)
    npz = mmarray.load(path, compressed="ignore")          # a size zlib can be asked for
    with pytest.raises(ValueError, match=f"the directory says {sys.maxsize - 1}"):
        npz["x"]


HUGE_DIM = 2**70
HEADERS = {  # (header text, the value its message names)
    "fast path": ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %d), }" % HUGE_DIM,
                  str(HUGE_DIM)),
    "numpy's parser": ("{'shape': (0, %d), 'fortran_order': False, 'descr': '<f8'}"
                       % HUGE_DIM, str(HUGE_DIM)),
    "dimension past intp": ("{'descr': '|u1', 'fortran_order': False, 'shape': (%d, 0), }"
                            % 2**63, str(2**63)),
    "nonzero span past intp": ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %d), }"
                               % (2**63 - 1), str(8 * (2**63 - 1))),
    "25 digits": ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %s), }" % ("9" * 25),
                  "9" * 25),
    "1000 digits": ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %s), }"
                    % ("9" * 1000), "bits>"),
    "5000 digits": ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %s), }"
                    % ("9" * 5000), ""),
}


def npy_header_dtype(text):
    return np.dtype(text.split("'descr': '")[1].split("'")[0])


def test_numpy_refuses_a_shape_whose_nonzero_dimensions_overflow():
    # What the "nonzero span past intp" case rests on.
    with pytest.raises(ValueError, match="too big"):
        np.empty((0, 2**63 - 1), "<f8")


def _in_archive(path, npy, method):
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("x.npy", npy)
    return path


@pytest.mark.parametrize("where", ["npy", "stored member", "deflated member"])
@pytest.mark.parametrize("case", list(HEADERS))
def test_npy_header_shape_numpy_cannot_make_is_a_value_error_naming_the_file(tmp_path, case,
                                                                            where):
    text, named = HEADERS[case]
    npy = npy_header(text)
    if where == "npy":
        path = tmp_path / "h.npy"
        path.write_bytes(npy)
        label = str(path)
    else:
        path = _in_archive(tmp_path / "h.npz", npy, zipfile.ZIP_STORED if where == "stored "
                           "member" else zipfile.ZIP_DEFLATED)
        label = "'x'"
    with pytest.raises(ValueError) as info:       # OverflowError (from .array) before
        m = mmarray.load(path, compressed="ignore")
        if where != "npy":
            m = m["x"]
        m.array
    msg = str(info.value)
    assert label in msg and named in msg and len(msg) < 1500, msg


@pytest.mark.parametrize("text, shape", [
    ("{'descr': '|u1', 'fortran_order': False, 'shape': (0, %d), }" % (2**63 - 1),
     (0, 2**63 - 1)),
    ("{'descr': '<f8', 'fortran_order': False, 'shape': (0, %d), }" % (2**60 - 1),
     (0, 2**60 - 1)),
    ("{'descr': '|u1', 'fortran_order': False, 'shape': (%d, 0), }" % 2**62, (2**62, 0))])
def test_npy_header_with_the_largest_shapes_numpy_makes_loads(tmp_path, text, shape):
    np.empty(shape, npy_header_dtype(text))        # numpy makes them
    path = tmp_path / "h.npy"
    path.write_bytes(npy_header(text))
    with mmarray.load(path) as m:
        assert m.array.shape == shape and m.array.size == 0


# -- C. file objects and paths given to load --------------------------------------------------

class Recorder:
    """A file object whose fileno() returns ``fd``; every other call is recorded."""

    def __init__(self, fd):
        self.fd, self.calls = fd, []

    def fileno(self):
        if isinstance(self.fd, BaseException):
            raise self.fd
        return self.fd

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def record(*args, **kwargs):
            self.calls.append(name)
            return b"" if name.startswith("read") else 0
        return record


def _closed_fd(tmp_path):
    fd = os.open(tmp_path / "closed", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    return fd


@pytest.mark.parametrize("mode", ["r", "r+"])
@pytest.mark.parametrize("fd, exc, named", [
    (None, TypeError, "None"), (b"x", TypeError, "b'x'"), (-1, ValueError, "-1"),
    (2**31, ValueError, str(2**31)), (2**64, ValueError, str(2**64)),
    (io.UnsupportedOperation("fileno"), TypeError, "fileno"), ("closed", OSError, None)])
def test_load_file_object_with_a_bad_fileno_reads_and_writes_nothing(tmp_path, mode, fd, exc,
                                                                      named):
    if fd == "closed":
        fd = _closed_fd(tmp_path)
    f = Recorder(fd)
    with pytest.raises(exc, match=named) as info:
        mmarray.load(f, mode=mode)
    if exc is OSError:
        assert info.value.errno == errno.EBADF
    assert f.calls == []          # no read, write, flush, seek or tell


needs_fcntl = pytest.mark.skipif(os.name == "nt", reason="O_APPEND is read with fcntl")


def open_appending(path, how):
    """``path`` open with every write going to its end: a file object in mode 'ab'/'ab+', or
    one in mode 'rb+' whose descriptor was given O_APPEND."""
    if how != "O_APPEND":
        return open(path, how)
    import fcntl

    f = open(path, "r+b")
    fcntl.fcntl(f.fileno(), fcntl.F_SETFL, fcntl.fcntl(f.fileno(), fcntl.F_GETFL) | os.O_APPEND)
    return f


@pytest.mark.parametrize("how", ["ab+", pytest.param("O_APPEND", marks=needs_fcntl)])
def test_r_plus_load_of_an_archive_open_in_append_mode_is_a_value_error(tmp_path, how):
    # pwrite ignores its offset on an O_APPEND descriptor (Linux): each CRC-32 rewrite
    # would append 4 bytes and leave the stored CRC-32s stale.
    path = savez(tmp_path, x=np.arange(10))
    before = path.read_bytes()
    with open_appending(path, how) as f:
        f.seek(0)
        with pytest.raises(ValueError, match="append mode") as info:
            mmarray.load(f, mode="r+")
        assert str(path) in str(info.value)
        f.seek(0)
        with mmarray.load(f) as npz:             # mode 'r' writes nothing: accepted
            assert npz["x"].array.tolist() == list(range(10))
    assert path.read_bytes() == before


@needs_fcntl
def test_crc_writeback_through_a_file_object_switched_to_append_mode_writes_nothing(tmp_path):
    import fcntl

    path = savez(tmp_path, x=np.arange(10))
    with open(path, "r+b") as f:
        npz = mmarray.load(f, mode="r+")
        m = npz["x"]
        m.array[0] = 7
        fcntl.fcntl(f.fileno(), fcntl.F_SETFL, fcntl.fcntl(f.fileno(), fcntl.F_GETFL)
                    | os.O_APPEND)
        assert f.mode == "rb+"
        written = path.read_bytes()
        with pytest.raises(ValueError, match="append mode"):
            m.flush()
        with pytest.raises(ValueError, match="append mode"):
            npz.close()
        assert path.read_bytes() == written     # the data, its CRC-32 stale, nothing appended


@pytest.mark.parametrize("how", ["ab", "ab+", pytest.param("O_APPEND", marks=needs_fcntl)])
def test_save_npz_to_a_file_object_in_append_mode_is_a_value_error(tmp_path, how):
    # Each member's CRC-32 is written back after its data: appended instead, the archive
    # would not be readable.
    path = tmp_path / "out.npz"
    path.write_bytes(b"kept")
    with open_appending(path, how) as f:
        with pytest.raises(ValueError, match="append mode") as info:
            mmarray.save_npz(f, x=np.arange(3))
        assert str(path) in str(info.value)
    assert path.read_bytes() == b"kept"


def _null_path(tmp_path, kind):
    path = str(tmp_path / "data.npy") + "\0x"
    return os.fsencode(path) if kind == "bytes" else path


@pytest.mark.parametrize("kind", ["str", "bytes"])
@pytest.mark.parametrize("call", [
    lambda p: mmarray.load(p), lambda p: mmarray.load(p, mode="r+"),
    lambda p: mmarray.create_npy(p, "f8", 3), lambda p: mmarray.save_npz(p, x=np.arange(3))],
    ids=["load", "load r+", "create_npy", "save_npz"])
def test_path_with_a_null_byte_is_a_value_error_and_no_file_is_touched(tmp_path, call, kind):
    np.save(tmp_path / "data.npy", np.arange(3))   # what the path says before its null byte
    before = (tmp_path / "data.npy").read_bytes()
    with pytest.raises(ValueError, match="null") as info:
        call(_null_path(tmp_path, kind))
    assert "data.npy" in str(info.value)
    assert os.listdir(tmp_path) == ["data.npy"]
    assert (tmp_path / "data.npy").read_bytes() == before


# -- D. durable replacement in create_npy and save_npz ---------------------------------------

WRITERS = {"create_npy": lambda p: mmarray.create_npy(p, "i2", 4).close(),
           "save_npz": lambda p: mmarray.save_npz(p, x=np.arange(4))}


def _temps(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".mmarray-tmp"))


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_killed_writers_temporary_is_removed_by_the_next_write_to_that_target(tmp_path,
                                                                                writer):
    target = tmp_path / "t.dat"
    call = {"create_npy": "mmarray.create_npy(path, 'i2', 4)",
            "save_npz": "mmarray.save_npz(path, x=np.arange(4))"}[writer]
    child = subprocess.Popen([sys.executable, "-c", f"""if 1:
        import os, numpy as np, mmarray
        path = {str(target)!r}
        os.replace = lambda *args, **kwargs: os._exit(9)   # killed before the rename
        {call}
    """])
    assert child.wait(timeout=120) == 9
    dead = child.pid                                    # reaped: no such process any more
    left = _temps(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".t.dat.{dead}.")
    kept = [f".t.dat.{os.getpid()}.{'c' * 12}.mmarray-tmp",    # a live writer's
            f".u.dat.{dead}.{'e' * 12}.mmarray-tmp",           # another target's
            f".t.dat.1.{dead}.{'a' * 12}.mmarray-tmp",          # target "t.dat.1"'s
            f".t.dat.{dead}.{'b' * 12}.tmp"]                   # not named as ours
    for name in kept:
        (tmp_path / name).write_bytes(b"keep")
    WRITERS[writer](target)
    assert sorted(os.listdir(tmp_path)) == sorted(kept + ["t.dat"])
    assert all((tmp_path / name).read_bytes() == b"keep" for name in kept)


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writes_into_one_directory_list_it_once_per_interval(tmp_path, monkeypatch, writer):
    # Listing the directory for stale temporaries at every write made the n-th write into
    # a directory O(n): a dataset of many small files was written in O(n^2).
    from mmarray import _npyformat
    listed = []
    real_scandir = os.scandir

    def scandir(path="."):
        listed.append(os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", scandir)
    for i in range(20):
        WRITERS[writer](tmp_path / f"f{i}.dat")
    assert listed == [str(tmp_path)]
    assert sorted(os.listdir(tmp_path)) == sorted(f"f{i}.dat" for i in range(20))
    # A writer that died after that listing: its temporary goes once the interval is over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=120)
    stale = tmp_path / f".f3.dat.{dead.pid}.{'d' * 12}.mmarray-tmp"
    stale.write_bytes(b"left")
    WRITERS[writer](tmp_path / "f3.dat")
    assert stale.exists() and len(listed) == 1            # not listed again yet
    monkeypatch.setattr(_npyformat, "STALE_SCAN_EVERY", 0.0)
    WRITERS[writer](tmp_path / "f3.dat")
    assert not stale.exists() and listed == [str(tmp_path)] * 2
    assert _temps(tmp_path) == []


DEAD_PID = 999999999  # above any pid_max: os.kill says no such process


@pytest.mark.parametrize("attempt", range(5))
def test_threads_writing_one_target_past_a_dead_temporary_all_succeed(tmp_path, attempt):
    # Found by review: two threads removing the same listed temporary, the second raised
    # ValueError (list.remove) out of save_npz.
    from mmarray import _npyformat
    (tmp_path / f".t.npz.{DEAD_PID}.0123456789ab.mmarray-tmp").write_bytes(b"left")
    _npyformat._temps_listed.clear()
    errors, barrier = [], threading.Barrier(8)

    def work():
        barrier.wait()
        try:
            mmarray.save_npz(tmp_path / "t.npz", a=np.arange(3))
        except Exception as exc:
            errors.append(exc)
    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and _temps(tmp_path) == []
    assert np.load(tmp_path / "t.npz")["a"].tolist() == [0, 1, 2]


def test_a_dead_temporary_is_found_in_the_directory_a_symlink_and_dotdot_lead_to(tmp_path,
                                                                                monkeypatch):
    # "link/.." is the parent of the link's target for the kernel, not the current directory.
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    os.symlink(tmp_path / "real" / "sub", tmp_path / "cwd" / "link")
    monkeypatch.chdir(tmp_path / "cwd")
    beside = tmp_path / "real" / f".x.npz.{DEAD_PID}.0123456789ab.mmarray-tmp"
    elsewhere = tmp_path / "cwd" / f".x.npz.{DEAD_PID}.ba9876543210.mmarray-tmp"
    beside.write_bytes(b"left")
    elsewhere.write_bytes(b"another directory's")
    mmarray.save_npz("link/../x.npz", a=np.arange(3))
    assert (tmp_path / "real" / "x.npz").exists()
    assert not beside.exists() and elsewhere.read_bytes() == b"another directory's"


def test_a_write_from_a_removed_working_directory_names_the_file(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    with pytest.raises(FileNotFoundError) as info:
        mmarray.save_npz("x.npz", a=np.arange(3))
    assert info.value.filename == "x.npz"


def test_a_listed_temporary_replaced_by_a_symlink_is_not_removed(tmp_path):
    from mmarray import _npyformat
    _npyformat._temps_listed.clear()
    mmarray.save_npz(tmp_path / "first.npz", a=np.arange(3))       # lists the directory
    link = tmp_path / f".t.npz.{DEAD_PID}.0123456789ab.mmarray-tmp"
    link.write_bytes(b"a temporary when listed")
    _npyformat._temps_listed.clear()
    mmarray.save_npz(tmp_path / "second.npz", a=np.arange(3))      # lists it with the file
    link.unlink()
    (tmp_path / "kept").write_bytes(b"keep")
    os.symlink(tmp_path / "kept", link)                           # a link at that name now
    mmarray.save_npz(tmp_path / "t.npz", a=np.arange(3))
    assert os.path.islink(link) and (tmp_path / "kept").read_bytes() == b"keep"


@pytest.mark.parametrize("writer", list(WRITERS))
def test_the_temporary_is_fsynced_before_the_rename_and_the_directory_after(tmp_path,
                                                                           monkeypatch,
                                                                           writer):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        head = b"" if stat.S_ISDIR(st.st_mode) else os.pread(fd, st.st_size, 0)
        events.append(("fsync", st.st_ino, stat.S_ISDIR(st.st_mode), head))
        return real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("replace", os.stat(src).st_ino, os.fspath(dst)))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = tmp_path / "out.dat"
    WRITERS[writer](path)
    final = path.read_bytes()
    inode, dir_inode = os.stat(path).st_ino, os.stat(tmp_path).st_ino
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    assert len(renames) == 1 and events[renames[0]][1:] == (inode, str(path))
    before, after = events[:renames[0]], events[renames[0] + 1:]
    synced = [e[3] for e in before if e[:3] == ("fsync", inode, False)]
    assert synced, events                        # the temporary, before the rename...
    if writer == "create_npy":                   # ... with its header (the data is mapped)
        assert synced[-1][:len(final) - 8] == final[:-8]
    else:
        assert synced[-1] == final               # ... complete
    if os.name == "posix":
        assert ("fsync", dir_inode, True, b"") in after      # the directory, after it


# -- found by a hostile audit of the .npz paths (helper-56) -----------------------------------

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_member_of_an_archive_whose_path_is_now_a_fifo_is_refused_at_once(tmp_path):
    """The member's reopen by name blocked for ever in open(2) on the FIFO; and a FIFO made
    once the archive is gone may reuse its inode number, which passed the identity check."""
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        p = {str(tmp_path / "t.npz")!r}
        np.savez(p, x=np.arange(10))
        for mode in ("r", "c", "r+"):
            z = mmarray.load(p, mode=mode)
            os.rename(p, p + ".old")
            os.mkfifo(p)
            try:
                z["x"]
            except ValueError as exc:
                assert "was replaced since it was loaded" in str(exc), exc
            else:
                raise AssertionError("mapped a FIFO")
            os.unlink(p)
            os.rename(p + ".old", p)
        z = mmarray.load(p)
        os.unlink(p)
        os.mkfifo(p)  # may take the archive's inode number
        try:
            z["x"]
        except ValueError as exc:
            assert "was replaced since it was loaded" in str(exc), exc
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_close_closes_members_other_threads_open_while_it_runs(tmp_path):
    """A member opened by another thread while close() ran was stored after close() had
    taken the members it closes: it stayed open, its CRC-32 stale until garbage collection."""
    path = str(tmp_path / "race.npz")
    np.savez(path, **{f"k{i}": np.zeros(1000) for i in range(20)})
    for _ in range(60):
        z = mmarray.load(path, mode="r+")
        got = []

        def opener(z=z, got=got):
            for k in list(z):
                try:
                    m = z[k]
                except ValueError:  # closed: what a member asked for after close() gets
                    continue
                got.append(m)

        threads = [threading.Thread(target=opener) for _ in range(3)]
        for t in threads:
            t.start()
        z.close()
        for t in threads:
            t.join()
        assert all(m.closed for m in got), [m for m in got if not m.closed]
    assert zipfile.ZipFile(path).testzip() is None


@pytest.mark.parametrize("change", ["rename", "chmod"])
def test_crc_of_a_written_member_is_rewritten_after_the_archive_is_renamed_or_made_read_only(
        tmp_path, change):
    """The rewrite reopened the archive by name: renamed, close() raised FileNotFoundError
    (chmod: PermissionError), the CRC-32 was never fixed and the archive failed np.load."""
    path, moved = str(tmp_path / "a.npz"), str(tmp_path / "moved.npz")
    np.savez(path, x=np.zeros(1000), y=np.arange(3))
    z = mmarray.load(path, mode="r+")
    z["x"].array[:] = 1
    if change == "rename":
        os.rename(path, moved)
    else:
        os.chmod(path, 0o444)
        moved = path
    if change == "rename":
        with pytest.raises(FileNotFoundError):  # a member opened now still goes by the name
            z["y"]
    z.close()
    assert zipfile.ZipFile(moved).testzip() is None
    assert np.load(moved)["x"].tolist() == [1.0] * 1000


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_r_plus_archive_holds_one_descriptor_until_its_members_are_gone(tmp_path):
    path = str(tmp_path / "a.npz")
    np.savez(path, x=np.zeros(10), y=np.zeros(10))

    def open_fds():
        return len(os.listdir("/proc/self/fd"))

    with mmarray.load(path) as warm:  # the fault guard's pipe, made with the first mapping
        warm["x"]
    gc.collect()
    before = open_fds()
    z = mmarray.load(path, mode="r+")
    a = z["x"].array
    z["y"]
    assert open_fds() == before + 1
    z.close()
    assert open_fds() == before + 1  # an array of x is alive: its CRC-32 is rewritten later
    a[0] = 5
    del a
    gc.collect()
    assert open_fds() == before
    assert zipfile.ZipFile(path).testzip() is None and np.load(path)["x"][0] == 5


def test_second_r_plus_handle_opens_a_member_the_first_wrote_but_did_not_flush(tmp_path):
    """The second handle's first open checked the member's CRC-32 against its data and
    called it corrupt: the first handle's writes were not flushed yet."""
    path = str(tmp_path / "t.npz")
    np.savez(path, x=np.zeros(10))
    first = mmarray.load(path, mode="r+")
    first["x"].array[0] = 1
    second = mmarray.load(path, mode="r+")
    assert second["x"].array[0] == 1
    second["x"].array[1] = 2
    second.close()
    first.close()
    assert zipfile.ZipFile(path).testzip() is None
    assert np.load(path)["x"].tolist()[:3] == [1, 2, 0]
    # once no handle holds it, a member changed without its CRC-32 is refused again
    with open(path, "r+b") as f:
        raw = f.read()
        at = raw.index(np.array([1.0, 2.0]).tobytes())
        f.seek(at)
        f.write(np.float64(7).tobytes())
    gc.collect()
    with mmarray.load(path, mode="r+") as again, pytest.raises(ValueError, match="bad CRC-32"):
        again["x"]


def test_member_corrupted_while_another_handle_keeps_its_archive_open_is_refused(tmp_path):
    """helper-58: the CRC-32 check was skipped for good once one handle had verified the
    member, while that handle's archive stayed open (its member closed): a member another
    writer corrupted since got a fresh CRC-32 written over it."""
    path = str(tmp_path / "a.npz")
    np.savez(path, a=np.arange(1000))
    first = mmarray.load(path, mode="r+")
    first["a"].close()                         # checked and closed; the archive stays open
    with open(path, "r+b") as f:               # another writer, without the CRC-32
        at = f.read().index(np.arange(1000).tobytes()) + 5 * 8
        f.seek(at)
        f.write(np.int64(-1).tobytes())
    with mmarray.load(path, mode="r+") as second, pytest.raises(ValueError, match="bad CRC"):
        second["a"]
    first.close()
    with pytest.raises(zipfile.BadZipFile):    # left as it was: still reported as corrupt
        np.load(path)["a"]


def test_member_closed_by_two_threads_at_once_raises_in_neither(tmp_path):
    """helper-58: member.close() and npz.close() at once: one raised ValueError('mapping is
    closed') from the CRC-32 update reading the member another thread had just closed."""
    path = str(tmp_path / "a.npz")
    np.savez(path, a=np.zeros(1 << 16))
    errors = []
    for _ in range(40):
        npz = mmarray.load(path, mode="r+")
        member = npz["a"]
        member.array[0] += 1
        start = threading.Barrier(2)

        def close(what, start=start):
            start.wait()
            try:
                what.close()
            except Exception as exc:  # noqa: BLE001  # any error is the failure
                errors.append(repr(exc))

        threads = [threading.Thread(target=close, args=(w,)) for w in (member, npz)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert zipfile.ZipFile(path).testzip() is None and np.load(path)["a"][0] == 40


def test_archive_lock_is_not_held_while_a_member_is_opened(tmp_path, monkeypatch):
    """helper-58: an 'r+' open (which reads the whole member) held the archive's lock, so a
    member already open, or close(), waited for it in every other thread."""
    from mmarray import _npz
    path = str(tmp_path / "a.npz")
    np.savez(path, small=np.zeros(4), big=np.zeros(8))
    npz = mmarray.load(path, mode="r+")
    small = npz["small"]
    entered, release = threading.Event(), threading.Event()
    real_open = _npz.NpzMapping._open

    def slow_open(self, e):
        if e.key == "big":
            entered.set()
            release.wait(30)
        return real_open(self, e)

    monkeypatch.setattr(_npz.NpzMapping, "_open", slow_open)
    opener = threading.Thread(target=lambda: npz["big"])
    opener.start()
    try:
        assert entered.wait(30)
        got = []
        reader = threading.Thread(target=lambda: got.append(npz["small"]))
        reader.start()
        reader.join(10)
        assert got == [small], "npz['small'] waited for the other thread's open"
    finally:
        release.set()
        opener.join(30)
    npz.close()
    assert small.closed


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_child_forked_while_a_thread_holds_the_archive_lock_can_use_the_archive(tmp_path):
    proc = run_python(f"""
        import os, threading
        import numpy as np
        import mmarray
        p = {str(tmp_path / "a.npz")!r}
        np.savez(p, x=np.arange(4))
        npz = mmarray.load(p, mode="r+")
        held, done = threading.Event(), threading.Event()
        def hold():
            with npz._lock:          # a thread inside npz[...] or close() at the fork
                held.set()
                done.wait()
        t = threading.Thread(target=hold)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            import signal
            signal.alarm(20)
            ok = npz["x"].array.tolist() == [0, 1, 2, 3]
            npz.close()
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        done.set()
        t.join()
        npz.close()
        print(os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"]


def test_second_handle_opens_a_member_written_through_arrays_of_a_closed_one(tmp_path):
    """helper-60: a member closed while its arrays lived, then written through them, has
    its CRC-32 rewritten only once it is garbage: a second handle meanwhile called the
    pending writes corruption."""
    path = str(tmp_path / "x.npz")
    np.savez(path, x=np.arange(3))
    first = mmarray.load(path, mode="r+")
    member = first["x"]
    a = member.array
    member.close()
    a[1] = 77
    del a
    with mmarray.load(path, mode="r+") as second:
        assert second["x"].array.tolist() == [0, 77, 2]
    first.close()
    del member
    gc.collect()
    assert zipfile.ZipFile(path).testzip() is None


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_the_archives_held_descriptor_cannot_be_copied_to_close_it_twice(tmp_path, how):
    # A copy of npz._held held the same descriptor number and closed it when garbage: the
    # archive's CRC-32 rewrites then went to whatever file reused the number (EBADF at best).
    import copy
    import pickle

    path = tmp_path / "a.npz"
    np.savez(path, x=np.arange(4))
    npz = mmarray.load(path, mode="r+")
    held = npz._held
    fd = held.fileno()
    dup = {"copy": copy.copy, "deepcopy": copy.deepcopy,
           "pickle": lambda h: pickle.loads(pickle.dumps(h))}[how]
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        dup(held)
    os.fstat(fd)  # still open
    with npz["x"] as m:
        m.array[:] = 9
    npz.close()
    assert np.load(path)["x"].tolist() == [9] * 4  # the CRC-32 rewritten: zipfile checks it
