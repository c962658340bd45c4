"""Review fixes around Mapping.resize, NpyMapping.resize and append_npy: buffers of arrays
made before a resize, resizes racing other threads, and files left as they were when a
resize or an append fails. Crashes run in a subprocess with a timeout and check its exit
code."""
import os

import numpy as np
import pytest

import mmarray
from helpers import assert_clean_exit, run_python

# -- 1: an export serves the view of its own generation ------------------------------------------

def test_buffer_of_an_array_made_before_a_resize_stays_valid_after_close(tmp_path):
    """memoryview(a.base) after a resize pointed into the new view, which nothing counted:
    close() unmapped it under the memoryview (SIGSEGV)."""
    path = str(tmp_path / "g.bin")
    proc = run_python(f"""
        import mmarray
        m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=4096)
        a = m.array
        a[:] = 7
        m.resize(8192)
        mv = memoryview(a.base)
        assert len(mv) == 4096, len(mv)
        m.close()
        assert mv[4000] == 7
        m2 = None
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


def test_export_object_turned_into_an_array_after_resize_and_rebase(tmp_path):
    path = str(tmp_path / "e.bin")
    proc = run_python(f"""
        import numpy as np, mmarray
        m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=4096)
        e = m._export()
        m.resize(1 << 20)
        m.resize(1 << 21)           # may move the view (mremap)
        a = np.frombuffer(e, dtype="u1")
        assert a.size == 4096, a.size
        m.close()
        a[:] = 3
        assert int(a.sum()) == 3 * 4096
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


# -- 2: resize holds the GIL across the remap ---------------------------------------------------

def test_resize_racing_a_thread_taking_arrays_does_not_crash(tmp_path):
    path = str(tmp_path / "r.bin")
    proc = run_python(f"""
        import mmarray, sys, threading
        sys.setswitchinterval(1e-6)
        for round in range(4):       # the unfixed race crashed about every other round
            m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=4096)
            stop = False
            def reader():
                while not stop:
                    a = m.array
                    int(a[-1]) + int(a[0])
                    del a
            t = threading.Thread(target=reader); t.start()
            for i in range(1500):
                m.resize(4096 if i % 2 else (1 << 22) + 4096 * (i % 7))
            stop = True; t.join()
            m.close()
        print("ok")
    """, timeout=240)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


def test_close_racing_resize_leaves_nothing_mapped(tmp_path):
    """close() from another thread during the remap left a closed Mapping still mapped."""
    d = str(tmp_path)
    proc = run_python(f"""
        import mmarray, os, sys, threading
        sys.setswitchinterval(1e-6)
        bad = 0
        for trial in range(100):
            p = os.path.join({d!r}, "c%d.bin" % trial)
            m = mmarray.open(p, dtype="u1", mode="w+", shape=4096)
            ev = threading.Event()
            def closer():
                ev.wait(); m.close()
            t = threading.Thread(target=closer); t.start()
            ev.set()
            try:
                for i in range(100):
                    m.resize(4096 if i % 2 else (1 << 22))
            except ValueError:
                pass
            t.join()
            if m.closed and (m._mapped_length() or m._identity() is not None):
                bad += 1
            os.unlink(p)
        assert bad == 0, bad
        print("ok")
    """, timeout=240)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


# -- helpers ------------------------------------------------------------------------------------

def tight_npy(path, arr):
    """A valid .npy whose header has no spare padding at all (as some writers make)."""
    descr = np.lib.format.dtype_to_descr(arr.dtype)
    hdr = ("{'descr': %r, 'fortran_order': False, 'shape': %r, }"
           % (descr, arr.shape)).encode() + b"\n"
    with open(path, "wb") as fh:
        fh.write(b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr + arr.tobytes())


def snapshot(path):
    st = os.stat(path)
    with open(path, "rb") as f:
        return f.read(), st.st_ino, st.st_mode


# -- 3: a failed shrink leaves the header as it was ---------------------------------------------

def test_npy_shrink_refused_for_a_live_array_leaves_the_header(tmp_path):
    path = str(tmp_path / "s.npy")
    np.save(path, np.arange(10.0))
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    a = m.array
    with pytest.raises(BufferError):
        m.resize(3, truncate=True)
    assert snapshot(path) == before
    assert np.load(path).shape == (10,)
    del a
    m.close()


def test_npy_shrink_refused_for_data_after_leaves_the_header(tmp_path):
    path = str(tmp_path / "t.npy")
    np.save(path, np.arange(10.0))
    with open(path, "ab") as f:
        f.write(b"trailing")
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    with pytest.raises(ValueError):
        m.resize(3, truncate=True)
    assert snapshot(path) == before
    m.close()


# -- 4, 5: the rename-over path checks before it writes -----------------------------------------

def test_rename_over_refused_after_a_raw_buffer_export_leaves_the_file(tmp_path):
    import hashlib
    path = str(tmp_path / "d.npy")
    tight_npy(path, np.arange(9.0))
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    hashlib.sha1(m)
    with pytest.raises(BufferError):
        m.resize(10)
    assert snapshot(path) == before
    assert m._identity()[1] == os.stat(path).st_ino


def test_rename_over_refused_while_another_mapping_of_the_file_is_open(tmp_path):
    path = str(tmp_path / "o.npy")
    tight_npy(path, np.arange(9.0))
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    other = mmarray.load(path, mode="r+")
    with pytest.raises(BufferError, match="another mapping"):
        m.resize(10)
    assert snapshot(path) == before
    with pytest.raises(BufferError, match="another mapping"):
        mmarray.append_npy(path, np.zeros(1))
    assert snapshot(path) == before
    other.close()
    m.resize(10)                   # alone now: rewritten with room
    assert np.load(path).shape == (10,)
    m.close()
    mmarray.append_npy(path, np.zeros(1))
    assert np.load(path).shape == (11,)


def test_rename_over_after_a_resize_with_an_array_alive(tmp_path):
    """The mapping's own retired views are not 'another mapping'. A shrink without truncate
    leaves the old rows after the data, which a grow would take back as rows: refused
    (session 20), so the rewrite comes from a grow straight away."""
    path = str(tmp_path / "own.npy")
    tight_npy(path, np.arange(9.0))
    m = mmarray.load(path, mode="r+")
    a = m.array
    m.resize(5)
    with pytest.raises(ValueError, match="bytes after the array's data"):
        m.resize(12)
    assert np.load(path).shape == (5,)
    m.close()
    path2 = str(tmp_path / "own2.npy")
    tight_npy(path2, np.arange(9.0))
    m = mmarray.load(path2, mode="r+")
    b = m.array
    m.resize(12)                 # no room: rewritten, b keeps the old file's view
    m.resize(14)
    assert np.load(path2).shape == (14,)
    assert a[8] == 8.0 and b[8] == 8.0
    del a, b
    m.close()


# -- 6, 7: symlinks, modes, hard links, a file changed meanwhile -------------------------------

@pytest.mark.skipif(os.name == "nt", reason="POSIX links and modes")
def test_rename_over_follows_a_symlink_and_keeps_the_mode(tmp_path):
    real = str(tmp_path / "real.npy")
    link = str(tmp_path / "link.npy")
    tight_npy(real, np.arange(9.0))
    os.chmod(real, 0o600)
    os.symlink(real, link)
    m = mmarray.load(link, mode="r+")
    m.resize(10)
    m.close()
    assert os.path.islink(link)
    assert np.load(real).shape == (10,)
    assert os.stat(real).st_mode & 0o777 == 0o600
    mmarray.append_npy(link, np.zeros(1))
    assert os.path.islink(link) and np.load(real).shape == (11,)


@pytest.mark.skipif(os.name == "nt", reason="POSIX hard links")
def test_rename_over_refused_for_a_hard_linked_file(tmp_path):
    path = str(tmp_path / "h.npy")
    tight_npy(path, np.arange(9.0))
    os.link(path, str(tmp_path / "h2.npy"))
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    with pytest.raises(ValueError, match="hard links"):
        m.resize(10)
    m.close()
    with pytest.raises(ValueError, match="hard links"):
        mmarray.append_npy(path, np.zeros(1))
    assert snapshot(path) == before
    assert os.stat(path).st_ino == os.stat(str(tmp_path / "h2.npy")).st_ino


def test_rename_over_refused_when_the_name_changed_during_the_copy(tmp_path, monkeypatch):
    from mmarray import _append
    from mmarray import _npyformat as fmt
    path = str(tmp_path / "r.npy")
    tight_npy(path, np.arange(9.0))
    real_write_all = fmt.write_all
    calls = []

    def write_all(fd, data):
        real_write_all(fd, data)
        if not calls:              # after the header of the copy: another file takes the name
            calls.append(1)
            os.replace(str(tmp_path / "x.npy"), path)
    np.save(str(tmp_path / "x.npy"), np.ones(3))
    monkeypatch.setattr(fmt, "write_all", write_all)
    with pytest.raises(ValueError, match="changed while"):
        _append._append(os.open(path, os.O_RDWR), path, repr(path), np.zeros(1), False)
    assert np.load(path).tolist() == [1.0, 1.0, 1.0]
    assert not [n for n in os.listdir(tmp_path) if n.endswith("mmarray-tmp")]


# -- 8, 13: sizes validated before anything is written ------------------------------------------

def test_npy_resize_to_a_huge_size_is_a_value_error_naming_it(tmp_path):
    path = str(tmp_path / "big.npy")
    tight_npy(path, np.arange(9.0))
    before = snapshot(path)
    m = mmarray.load(path, mode="r+")
    with pytest.raises(ValueError, match=str(10**100)):
        m.resize(10**100)
    with pytest.raises(ValueError, match="negative"):
        m.resize(-1)
    with pytest.raises(TypeError, match="int or a tuple of ints"):
        m.resize(1.5)
    assert snapshot(path) == before
    m.close()


@pytest.mark.parametrize("shape", [2**62, 2**64, (2**40, 2**40)])
def test_mapping_resize_too_large_is_a_value_error_naming_the_size(tmp_path, shape):
    m = mmarray.open(str(tmp_path / "m.f8"), dtype="f8", mode="w+", shape=4)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        m.resize(shape)
    assert m.shape == (4,)
    m.close()


@pytest.mark.parametrize("shape", [1.5, None, [1.5]])
def test_mapping_resize_non_int_is_a_type_error(tmp_path, shape):
    m = mmarray.open(str(tmp_path / "m.f8"), dtype="f8", mode="w+", shape=4)
    with pytest.raises(TypeError, match="int or a tuple of ints"):
        m.resize(shape)
    m.close()


# -- 9: the shape is the header's, not a field name that looks like one ------------------------

def test_grown_header_keeps_a_field_name_that_looks_like_a_shape(tmp_path):
    path = str(tmp_path / "f.npy")
    dt = np.dtype([("'shape': (7,)", "<f8"), ("b", "<i4")])
    np.save(path, np.zeros(3, dt))
    mmarray.append_npy(path, np.ones(2, dt))
    back = np.load(path)
    assert back.dtype == dt and back.shape == (5,)
    m = mmarray.load(path, mode="r+")
    m.resize(7)
    m.close()
    back = np.load(path)
    assert back.dtype == dt and back.shape == (7,)


# -- 12: a failed append write leaves the file's old end ----------------------------------------

@pytest.mark.skipif(os.name == "nt", reason="RLIMIT_FSIZE is POSIX")
def test_append_failing_on_the_file_size_limit_truncates_back(tmp_path):
    path = str(tmp_path / "lim.npy")
    proc = run_python(f"""
        import os, resource, signal, numpy as np, mmarray
        path = {path!r}
        np.save(path, np.zeros(1000))
        size = os.path.getsize(path)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + 4096, size + 4096))
        try:
            mmarray.append_npy(path, np.ones(100000))
        except OSError:
            pass
        else:
            raise SystemExit("no error")
        assert os.path.getsize(path) == size, os.path.getsize(path)
        assert np.load(path).shape == (1000,)
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


# -- 11: a grow whose map fails leaves the file's old size --------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="Linux RLIMIT_AS")
def test_failed_grow_under_rlimit_as_truncates_back(tmp_path):
    path = str(tmp_path / "as.bin")
    proc = run_python(f"""
        import os, resource, mmarray
        path = {path!r}
        m = mmarray.open(path, dtype="u1", mode="w+", shape=4096)
        a = m.array                      # also exercise the branch that keeps the old view
        with open("/proc/self/status") as f:
            vm = [int(l.split()[1]) * 1024 for l in f if l.startswith("VmSize:")][0]
        resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), resource.RLIM_INFINITY))
        for keep in (True, False):
            if not keep:
                del a
            try:
                m.resize(256 << 20)
            except (OSError, MemoryError, ValueError):
                pass
            else:
                raise SystemExit("resize did not fail")
            assert os.path.getsize(path) == 4096, (keep, os.path.getsize(path))
            assert m.shape == (4096,)
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout
