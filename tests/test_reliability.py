"""Regression tests for the crash, hang and data-loss holes of the adversarial audit (#8).

Each test is named for the case it pins. Cases that crashed or hung before the fix run in a
subprocess with a timeout and check its exit code.
"""
import errno
import gc
import os
import shutil
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

import mmarray
from mmarray import _engine
from helpers import assert_clean_exit, mapped_smaps, run_python

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo()")


class FakeFile:
    """A file-like object whose fileno() returns whatever it is given."""

    def __init__(self, fd, readable=True):
        self.fd = fd
        if readable:
            self.read = lambda *a: b""

    def fileno(self):
        return self.fd


# -- 1. fileno() that is not a descriptor --------------------------------------------------

def test_fileno_returning_none_never_maps_process_memory():
    """fileno() -> None made a 0-byte mapping whose 16 MiB array pointed at a static byte:
    writing it segfaulted, reading it (mmarray.memmap) returned process memory."""
    proc = run_python("""
        import mmarray
        class F:
            read = lambda self, *a: b""
            def fileno(self): return None
        for make in (mmarray.open, mmarray.memmap):
            try:
                m = make(F(), mode="r+", shape=1 << 24)
            except TypeError as exc:
                assert "fileno() returned None" in str(exc), exc
                continue
            a = m.array if hasattr(m, "array") else m
            a[:] = 1        # the old code crashed here
            raise SystemExit(f"{make.__name__} accepted fileno() -> None")
        print("refused")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "refused"


def test_fileno_returning_bytes_is_not_taken_as_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "victim").write_bytes(b"precious")
    for make in (mmarray.open, mmarray.memmap):
        with pytest.raises(TypeError, match=r"fileno\(\) returned b'victim'; expected a "
                                            r"non-negative int"):
            make(FakeFile(b"victim"), mode="w+", shape=0)
    assert (tmp_path / "victim").read_bytes() == b"precious"


@pytest.mark.parametrize("value, error, words", [
    (-1, ValueError, "returned -1; expected a file descriptor from 0 to 2147483647"),
    (2**31, ValueError, "returned 2147483648; expected a file descriptor"),
    (2**64, ValueError, "returned 18446744073709551616; expected a file descriptor"),
    (1.5, TypeError, "returned 1.5; expected a non-negative int"),
    (True, TypeError, "returned True; expected a non-negative int"),
    ("3", TypeError, "returned '3'; expected a non-negative int"),
])
def test_fileno_returning_a_non_descriptor_is_refused_naming_it(value, error, words):
    for make in (mmarray.open, mmarray.memmap):
        with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
            make(FakeFile(value), mode="r+", shape=4096)


def test_fileno_of_a_closed_descriptor_is_os_error_ebadf(tmp_path):
    fd = os.open(tmp_path / "f.bin", os.O_RDWR | os.O_CREAT)
    os.close(fd)
    with pytest.raises(OSError, match=f"fileno\\(\\) returned {fd}") as info:
        mmarray.open(FakeFile(fd), mode="r+", shape=4096)
    assert info.value.errno == errno.EBADF


def test_engine_never_builds_an_array_larger_than_it_mapped():
    """_engine.map_file(None, ..., shape=(1 << 24,)) segfaulted on access."""
    proc = run_python("""
        import numpy as np
        from mmarray import _engine
        u8 = np.dtype("u1")
        cases = [
            (None, 0, 0, 1 << 24, 0, u8, (1 << 24,), "C", "r+", None),   # no file, big shape
            (None, 0, 0, 0, 0, u8, (1 << 24,), "C", "r+", None),         # length 0, big shape
            (None, 0, 0, 0, 0, np.dtype(object), (0,), "C", "r", None),  # object dtype
            (None, 0, 0, 0, 0, "u1", (0,), "C", "r", None),              # not a dtype
            (None, 0, 0, 0, 0, u8, (0,), "X", "r", None),                # bad order
            (None, 0, 0, 0, 0, u8, [0], "C", "r", None),                 # not a tuple
            (None, 0, 0, 0, 0, u8, (-1,), "C", "r", None),               # negative
            (3.0, 0, 0, 8, 0, u8, (8,), "C", "r", None),                 # not bytes/int/None
            (-1, 0, 0, 8, 0, u8, (8,), "C", "r", None),                  # negative descriptor
            (0, 0, 0, 8, 1, u8, (8,), "C", "r", None),                   # CREATE on a descriptor
        ]
        for args in cases:
            try:
                m = _engine.map_file(*args)
            except (TypeError, ValueError):
                continue
            a = m.array
            a[-1] = 1 if a.size else 0
            raise SystemExit(f"accepted {args!r}")
        try:
            _engine.map_file(None, 0, 0, 0, 0, u8, (0,), "C", "r", None, cls=dict)
        except TypeError:
            pass
        else:
            raise SystemExit("accepted cls=dict")
        print("refused")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "refused"


def test_engine_refuses_a_shape_that_disagrees_with_the_length(tmp_path):
    path = tmp_path / "d.bin"
    path.write_bytes(bytes(100))
    with pytest.raises(ValueError, match="is 800 bytes, but 100 bytes are to be mapped"):
        _engine.map_file(os.fsencode(path), _engine.WRITE, 0, 100, 0, np.dtype("f8"),
                         (100,), "C", "r+", str(path))


# -- 2. NUL bytes in paths -----------------------------------------------------------------

@pytest.mark.parametrize("make", [mmarray.open, mmarray.memmap])
@pytest.mark.parametrize("kind", [str, os.fsencode])
def test_path_with_a_nul_byte_is_refused_before_anything_is_created(tmp_path, monkeypatch,
                                                                    make, kind):
    """open("victim\\0/etc/passwd", "w+") created ./victim; "data.bin\\0x" wrote data.bin."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.bin").write_bytes(b"original")
    with pytest.raises(ValueError, match="embedded null byte"):
        make(kind("victim\0/etc/passwd"), mode="w+", shape=4)
    for shape in (4, 0):
        with pytest.raises(ValueError, match="embedded null byte"):
            make(kind("data.bin\0x"), mode="r+", shape=shape)
    with pytest.raises(ValueError, match="embedded null byte"):
        make(kind("data.bin\0x"), mode="w+", shape=0)
    assert sorted(os.listdir(tmp_path)) == ["data.bin"]
    assert (tmp_path / "data.bin").read_bytes() == b"original"


def test_open_memmap_path_with_a_nul_byte_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="embedded null byte"):
        mmarray.open_memmap("victim\0x.npy", mode="w+", dtype="f4", shape=(2,))
    assert os.listdir(tmp_path) == []


# -- 4. a failed grow leaves the file as it was --------------------------------------------

def _mount(kind, where):
    """Mount a 4 MiB tmpfs or loop ext4 at ``where``; return an unmount callable or None."""
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", where]
        image = None
    else:
        if shutil.which("mkfs.ext4") is None:
            return None
        image = where + ".img"
        with open(image, "wb") as f:
            f.truncate(8 << 20)
        if subprocess.run(["mkfs.ext4", "-q", "-F", image], capture_output=True).returncode:
            os.unlink(image)
            return None
        cmd = ["mount", "-o", "loop", image, where]
    if shutil.which("mount") is None or subprocess.run(cmd, capture_output=True).returncode:
        if image:
            os.unlink(image)
        return None

    def unmount():
        gc.collect()  # mappings left by a failed test would keep the filesystem busy
        if subprocess.run(["umount", where], capture_output=True).returncode:
            subprocess.run(["umount", "-l", where], capture_output=True)
        if image:
            os.unlink(image)
    return unmount


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request):
    """A small filesystem that a test can fill (root only; skipped when it cannot mount)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    where = tempfile.mkdtemp(prefix=f"mmarray-{request.param}-")
    unmount = _mount(request.param, where)
    if unmount is None:
        os.rmdir(where)
        pytest.skip(f"cannot mount a {request.param} here")
    try:
        yield where
    finally:
        unmount()
        os.rmdir(where)


def _free_bytes(path):
    st = os.statvfs(path)
    return st.f_bfree * st.f_frsize


@pytest.mark.parametrize("make", [mmarray.open, mmarray.memmap])
def test_failed_r_plus_grow_on_a_full_disk_keeps_size_content_and_space(small_fs, make):
    path = os.path.join(small_fs, "data.bin")
    content = bytes(range(256)) * 1024  # 256 KiB
    with open(path, "wb") as f:
        f.write(content)
    os.sync()
    free = _free_bytes(small_fs)
    with pytest.raises(OSError) as info:
        make(path, mode="r+", shape=64 << 20)
    assert info.value.errno in (errno.ENOSPC, errno.EFBIG)
    assert path in str(info.value)
    assert os.path.getsize(path) == len(content)
    with open(path, "rb") as f:
        assert f.read() == content
    os.sync()
    assert _free_bytes(small_fs) >= free - 64 * 1024  # the space went back (metadata aside)


@pytest.mark.parametrize("make", [mmarray.open, mmarray.memmap])
def test_failed_w_plus_on_a_full_disk_keeps_the_old_file_and_returns_the_space(small_fs, make):
    """w+ truncated first, then failed for space: the old content was lost (0 bytes on
    tmpfs, zeros on ext4)."""
    path = os.path.join(small_fs, "data.bin")
    content = bytes(range(256)) * 4096  # 1 MiB
    with open(path, "wb") as f:
        f.write(content)
    os.sync()
    free = _free_bytes(small_fs)
    with pytest.raises(OSError) as info:
        make(path, mode="w+", shape=64 << 20)
    assert info.value.errno in (errno.ENOSPC, errno.EFBIG)
    assert os.path.getsize(path) == len(content)
    with open(path, "rb") as f:
        assert f.read() == content
    os.sync()
    assert _free_bytes(small_fs) >= free - 64 * 1024
    # a w+ that fits replaces the content with zeros, as before
    with make(path, mode="w+", shape=len(content) // 2) as m:
        a = m.array if hasattr(m, "array") else m
        assert a.shape == (len(content) // 2,) and not a.any()
        del a
    del m  # a memmap is its own array: the region stays mapped while it lives
    assert os.path.getsize(path) == len(content) // 2


def test_failed_w_plus_of_a_new_file_on_a_full_disk_leaves_nothing(small_fs):
    path = os.path.join(small_fs, "new.bin")
    free = _free_bytes(small_fs)
    with pytest.raises(OSError):
        mmarray.open(path, mode="w+", shape=64 << 20)
    assert not os.path.exists(path)
    os.sync()
    assert _free_bytes(small_fs) >= free - 64 * 1024


def test_w_plus_with_an_impossible_size_keeps_the_old_file(tmp_path):
    """The same promise, on any filesystem: 2**62 bytes fail (EFBIG or ENOSPC)."""
    path = tmp_path / "old.bin"
    path.write_bytes(b"keep me" * 1000)
    for shape, offset in [(2**62, 0), (0, 2**62), (8, 2**62)]:
        with pytest.raises(OSError) as info:
            mmarray.open(path, mode="w+", shape=shape, offset=offset)
        assert str(path) in str(info.value)
        assert path.read_bytes() == b"keep me" * 1000


def test_w_plus_with_an_impossible_offset_names_the_file_and_leaves_nothing(tmp_path):
    """shape=0, offset=2**62 said '[Errno 27] File too large' with no name, and left the
    created file behind."""
    path = tmp_path / "new.bin"
    with pytest.raises(OSError, match=r"File too large|No space") as info:
        mmarray.open(path, mode="w+", shape=0, offset=2**62)
    assert info.value.filename == str(path)
    assert not path.exists()


# -- 5, 6. no lock held across blocking calls ------------------------------------------------

@needs_fork
def test_fork_while_another_thread_is_inside_open_leaves_a_working_child(tmp_path):
    """The registry lock was held across the whole open/grow/populate/map and the child,
    forked at that moment, deadlocked in its first mmarray.open."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(512 << 20)
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(4096))
    proc = run_python(f"""
        import os, threading, time, warnings, mmarray
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        stop = time.monotonic() + 3
        def opener():
            while time.monotonic() < stop:
                with mmarray.open({str(big)!r}, mode="r", populate=True) as m:
                    m.evict()
        t = threading.Thread(target=opener)
        t.start()
        forks = 0
        while time.monotonic() < stop:
            pid = os.fork()
            if pid == 0:
                with mmarray.open({str(small)!r}, mode="r+") as m:
                    m.array[0] = 1
                with mmarray.open({str(small) + ".w"!r}, mode="w+", shape=16) as m:
                    pass
                os._exit(0)
            deadline = time.monotonic() + 20
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    raise SystemExit("child deadlocked")
                time.sleep(0.005)
            if status != 0:
                raise SystemExit(f"child failed with status {{status}}")
            forks += 1
        t.join()
        print("forks", forks)
    """, timeout=180)
    assert_clean_exit(proc)
    assert int(proc.stdout.split()[1]) > 0


@needs_fifo
def test_fifo_is_refused_at_once_in_every_mode(tmp_path):
    """A mode 'r' open of a FIFO blocked forever (and with it every other thread's open)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    proc = run_python(f"""
        import mmarray
        fifo = {str(fifo)!r}
        for make in (mmarray.open, mmarray.memmap):
            for mode, shape in [("r", None), ("r", 8), ("c", 8), ("r+", 8), ("r+", 0),
                                ("w+", 8), ("w+", 0)]:
                try:
                    make(fifo, mode=mode, shape=shape)
                except OSError as exc:
                    assert "not a regular file" in str(exc), (mode, shape, exc)
                    assert exc.filename == fifo, exc
                else:
                    raise SystemExit(f"mapped a FIFO with {{mode!r}}")
        print("refused")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "refused"


def test_slow_populate_in_one_thread_does_not_stall_a_small_open_in_another(tmp_path):
    """One process-wide lock serialised every open: a 12 s populate=True open stalled an
    unrelated 4 KiB open for 12 s. The small open must return while the big one still runs."""
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(4 << 30)   # sparse: populating reads 4 GiB of holes
    small = tmp_path / "small.bin"
    small.write_bytes(bytes(4096))
    started = threading.Event()
    result = {}

    def slow():
        started.set()
        m = mmarray.open(big, mode="r", populate=True)
        result["slow_done"] = time.monotonic()
        m.evict()
        m.close()

    t = threading.Thread(target=slow)
    t.start()
    started.wait()
    time.sleep(0.05)          # let the populating open reach its system call
    still_running = t.is_alive()
    with mmarray.open(small, mode="r") as m:
        assert m.array.sum() == 0
    small_done = time.monotonic()
    t.join()
    if not still_running:
        pytest.skip("the populating open finished before the small one started")
    assert small_done < result["slow_done"], "the small open waited for the populating one"


def test_signal_handler_calling_open_does_not_deadlock(tmp_path):
    """A signal handler that calls mmarray.open deadlocked the main thread when the signal
    came while the main thread held the registry lock (inside open_memmap's 'w+')."""
    proc = run_python(f"""
        import os, signal, time, mmarray, numpy as np
        d = {str(tmp_path)!r}
        other = os.path.join(d, "other.bin")
        np.zeros(4096, np.uint8).tofile(other)
        calls = [0]
        def handler(signum, frame):
            with mmarray.open(other, mode="r") as m:
                m.array.sum()
            calls[0] += 1
        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
        stop = time.monotonic() + 2
        n = 0
        while time.monotonic() < stop:
            mm = mmarray.open_memmap(os.path.join(d, "x.npy"), mode="w+", dtype="f4",
                                     shape=(64,))
            mm.close()
            del mm
            mmarray.open(os.path.join(d, "y.bin"), mode="w+", shape=64).close()
            n += 1
        signal.setitimer(signal.ITIMER_REAL, 0)
        print(n, calls[0])
    """, timeout=120)
    assert_clean_exit(proc)
    loops, calls = map(int, proc.stdout.split())
    assert loops > 0 and calls > 0


def test_w_plus_refused_while_another_thread_resets_the_same_file(tmp_path):
    """Two 'w+' resets of one file never run at once; the second is refused, not waited on."""
    path = tmp_path / "same.bin"
    path.write_bytes(bytes(16))
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    inside = []

    def reset():
        inside.append(1)
        with pytest.raises(ValueError, match="being reset .* by another thread"):
            mmarray.open(path, mode="w+", shape=8)
        return 0

    # truncate_guarded marks the file as being reset while its callable runs
    _engine.truncate_guarded(str(path), str(path), reset)
    assert inside == [1]
    assert _engine.live_views(*key) == 0
    mmarray.open(path, mode="w+", shape=8).close()  # the mark is gone afterwards


# -- 7. mappings freed by the garbage collector ----------------------------------------------

def test_mapping_freed_by_the_cycle_collector_is_unregistered(tmp_path):
    """Cython's tp_clear emptied the registration key before __dealloc__: 'w+' on the file
    was refused forever ("mapped by 1 live mapping(s)")."""
    path = tmp_path / "cycle.bin"
    path.write_bytes(bytes(4096))
    st = os.stat(path)
    gc.collect()
    gc.disable()
    try:
        m = mmarray.open(path, mode="r")
        holder = [m]
        holder.append(holder)
        assert _engine.live_views(st.st_dev, st.st_ino) == 1
        del m, holder
        assert _engine.live_views(st.st_dev, st.st_ino) == 1  # only the collector frees it
        gc.collect()
    finally:
        gc.enable()
    assert _engine.live_views(st.st_dev, st.st_ino) == 0
    mmarray.open(path, mode="w+", shape=16).close()


def test_mapping_kept_alive_by_a_traceback_is_unregistered_when_collected(tmp_path):
    path = tmp_path / "tb.bin"
    path.write_bytes(bytes(4096))
    st = os.stat(path)

    def make_cycle():
        m = mmarray.open(path, mode="r")  # noqa: F841 - held by the frame
        try:
            raise RuntimeError("boom")
        except RuntimeError as exc:
            err = exc  # noqa: F841 - err -> traceback -> this frame -> err: a cycle

    gc.collect()
    gc.disable()
    try:
        make_cycle()
        assert _engine.live_views(st.st_dev, st.st_ino) == 1
        gc.collect()
    finally:
        gc.enable()
    assert _engine.live_views(st.st_dev, st.st_ino) == 0
    mmarray.open(path, mode="w+", shape=16).close()


# -- 8. copy-on-write populate -----------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux smaps")
def test_populate_in_copy_on_write_mode_copies_nothing_into_private_memory(tmp_path):
    """MAP_POPULATE on a private mapping write-faults: a 1 GiB file became 1.06 GB of
    anonymous memory."""
    path = tmp_path / "cow.bin"
    size = 64 << 20
    with open(path, "wb") as f:
        f.write(np.ones(size, np.uint8).tobytes())
    with mmarray.open(path, mode="c", populate=True) as m:
        assert mapped_smaps(path, "Rss") >= size // 2  # populated ...
        assert mapped_smaps(path, "Anonymous") < size // 64  # ... without private copies
        a = m.array
        a[:4096] = 7   # writing still copies exactly what is written
        assert mapped_smaps(path, "Anonymous") >= 4096
        del a
    with open(path, "rb") as f:
        assert f.read(4096) == b"\x01" * 4096


# -- 9, 10. wrong answers and overflows --------------------------------------------------------

def test_chunks_of_zero_width_rows_yield_the_rows(tmp_path):
    """shape (100000, 0): chunks() raised 'OSError: invalid argument'."""
    with mmarray.open(tmp_path / "z.bin", mode="w+", dtype="f8", shape=(100000, 0)) as m:
        for prefetch in (True, False):
            chunks = list(m.chunks(1000, prefetch=prefetch))
            assert len(chunks) == 100
            assert all(c.shape == (1000, 0) for c in chunks)
            del chunks


def test_chunks_with_a_huge_ahead_is_not_an_overflow(tmp_path):
    """chunks(ahead=2**64) raised OverflowError."""
    with mmarray.open(tmp_path / "a.bin", mode="w+", dtype="f8", shape=(10000, 4)) as m:
        m.array[:] = 1
        assert sum(float(c.sum()) for c in m.chunks(100, ahead=2**64)) == 40000.0


def test_populate_ahead_loop_with_no_consumer_returns():
    """_PopulateAhead(m, 0, n, 1, 0).run() looped forever; a window of 0 is refused and a
    consumer that never moves ends the wait (10 s)."""
    proc = run_python("""
        import os, tempfile, time, mmarray
        from mmarray._engine import _PopulateAhead
        path = os.path.join(tempfile.mkdtemp(), "p.bin")
        m = mmarray.open(path, mode="w+", shape=1 << 20)
        for args in [(0, 1 << 20, 1, 0), (0, 1 << 20, 0, 1), (10, 5, 1, 1), (0, 1 << 21, 1, 1)]:
            try:
                _PopulateAhead(m, *args)
            except ValueError:
                continue
            raise SystemExit(f"accepted {args}")
        t0 = time.monotonic()
        _PopulateAhead(m, 0, 1 << 20, 4096, 4096).run()
        print(round(time.monotonic() - t0))
        m.close()
        try:
            _PopulateAhead(m, 0, 1, 1, 1)
        except ValueError as exc:
            assert "closed" in str(exc)
        else:
            raise SystemExit("accepted a closed mapping")
    """, timeout=120)
    assert_clean_exit(proc)
    assert 5 <= int(proc.stdout) <= 60


def test_private_entry_points_refuse_what_would_crash(tmp_path):
    """m._array_of(dict) segfaulted."""
    path = tmp_path / "p.bin"
    proc = run_python(f"""
        import numpy as np, mmarray
        m = mmarray.open({str(path)!r}, mode="w+", shape=64)
        for subtype in (dict, object, int):
            try:
                m._array_of(subtype)
            except TypeError as exc:
                assert "subtype must be numpy.ndarray" in str(exc)
            else:
                raise SystemExit(f"accepted {{subtype}}")
        assert m.exports == 0
        class Sub(np.ndarray):
            pass
        assert type(m._array_of(Sub)) is Sub
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


# -- 11. messages --------------------------------------------------------------------------

def test_zero_size_paths_name_the_file_as_a_str(tmp_path):
    """'Is a directory: b'/'' and 'File too large' with no name on the shape=0 paths."""
    for make in (mmarray.open, mmarray.memmap):
        with pytest.raises(IsADirectoryError) as info:
            make(os.fsencode(str(tmp_path)), mode="w+", shape=0)
        assert info.value.filename == str(tmp_path)
        with pytest.raises(IsADirectoryError) as info:
            make(str(tmp_path), mode="r+", shape=0)
        assert info.value.filename == str(tmp_path)


@pytest.mark.skipif(not os.path.exists("/proc/self/comm"), reason="needs Linux /proc")
def test_proc_file_is_refused_as_not_a_regular_file():
    """A /proc file in 'r+' with a shape said 'Illegal seek'."""
    with pytest.raises(OSError, match="not a regular file") as info:
        mmarray.open("/proc/self/comm", mode="r+", shape=4096)
    assert info.value.errno == errno.ENODEV
    assert info.value.filename == "/proc/self/comm"


def test_huge_shape_message_names_the_value_without_printing_5000_digits(tmp_path):
    """A 5,000-digit dimension gave 'Exceeds the limit (4300 digits)' instead of our error."""
    for shape in (10**5000, (10**5000, 1)):
        with pytest.raises(ValueError, match=r"shape \(<int of 16610 bits>,( 1)?\) has a "
                                             r"dimension above"):
            mmarray.open(tmp_path / "h.bin", mode="w+", shape=shape)
    with pytest.raises(ValueError, match="offset <int of 16610 bits> overflows 64 bits"):
        mmarray.open(tmp_path / "h.bin", mode="w+", shape=1, offset=10**5000)
    assert not (tmp_path / "h.bin").exists()


def test_asarray_of_a_closed_mapping_raises(tmp_path):
    """np.asarray(closed_mapping) silently gave a 0-d object array."""
    m = mmarray.open(tmp_path / "c.bin", mode="w+", shape=16)
    assert np.asarray(m).shape == (16,)
    m.close()
    with pytest.raises(ValueError, match="mapping is closed"):
        np.asarray(m)
    with pytest.raises(ValueError, match="mapping is closed"):
        np.array(m)


def test_close_of_a_frombuffer_array_finds_its_mapping(tmp_path):
    """mmarray.close(np.frombuffer(m)) said 'not backed by an mmarray mapping'."""
    m = mmarray.open(tmp_path / "f.bin", mode="w+", shape=16)
    a = np.frombuffer(m, dtype=np.uint8)
    assert mmarray.mapping_of(a) is m
    mmarray.close(a[2:5])
    assert m.closed
    a[0] = 1  # still valid: the raw buffer defers the unmap until the Mapping is garbage
    del a


# -- 14. interpreter exit ---------------------------------------------------------------

def test_mappings_alive_at_exit_print_nothing(tmp_path):
    """'Exception ignored in Mapping.__dealloc__ ... NoneType has no attribute get' at exit."""
    proc = run_python(f"""
        import gc, numpy as np, mmarray
        d = {str(tmp_path)!r}
        keep = []
        for i in range(50):
            m = mmarray.open(f"{{d}}/m{{i}}.bin", mode="w+", shape=4096)
            keep.append(m)
            keep.append(m.array)
            if i % 2:
                m.close()
            cyc = [mmarray.open(f"{{d}}/m{{i}}.bin", mode="r")]
            cyc.append(cyc)
        np.savez(f"{{d}}/a.npz", x=np.arange(10))
        npz = mmarray.load(f"{{d}}/a.npz", mode="r+")
        member = npz["x"].array
        member[0] = 5
        mm = mmarray.memmap(f"{{d}}/mm.bin", mode="w+", shape=10)
        view = mm[2:]
        gc.disable()   # leave the cycles for interpreter teardown
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stderr == ""


# -- found by the hostile review of the fixes above -------------------------------------------

def test_w_plus_racing_w_plus_on_a_new_path_never_deletes_the_winners_file(tmp_path):
    """The call that lost the race for the reset mark removed the file it had 'created',
    though the winner had it mapped: the winner's writes went to an unlinked inode."""
    for i in range(200):
        path = tmp_path / f"new{i}.bin"
        results = [None, None]
        barrier = threading.Barrier(2)

        def create(k, path=path, results=results, barrier=barrier):
            barrier.wait()
            try:
                results[k] = mmarray.open(path, mode="w+", shape=1 << 16)
            except ValueError as exc:  # lost the race: refused, changes nothing
                results[k] = exc
        threads = [threading.Thread(target=create, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [r for r in results if isinstance(r, mmarray.Mapping)]
        assert winners, results
        assert path.exists(), f"round {i}: the winner's file was removed ({results})"
        for m in winners:
            m.close()


def test_maps_racing_w_plus_resets_that_shrink_the_file_never_outrun_it(tmp_path):
    """A map that began just after a reset began registered a view longer than the file the
    reset left behind: reading its last element was SIGBUS (exit 135)."""
    path = tmp_path / "shrink.bin"
    proc = run_python(f"""
        import threading, time, mmarray
        path = {str(path)!r}
        big = 64 << 20
        mmarray.open(path, mode="w+", shape=big).close()
        stop = time.monotonic() + 5
        counts = {{"reads": 0, "refused": 0}}
        def writer():
            i = 0
            while time.monotonic() < stop:
                i += 1
                try:
                    mmarray.open(path, mode="w+", shape=big if i % 2 else 4096).close()
                except ValueError:
                    pass
        def reader():
            while time.monotonic() < stop:
                try:
                    m = mmarray.open(path, mode="r")
                except (ValueError, OSError):
                    counts["refused"] += 1
                    continue
                a = m.array
                a[-1]
                del a
                m.close()
                counts["reads"] += 1
        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader)
                                                       for _ in range(3)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(counts["reads"], counts["refused"])
    """, timeout=120)
    assert_clean_exit(proc)
    reads, _ = map(int, proc.stdout.split())
    assert reads > 0


@needs_fork
def test_fork_during_a_w_plus_reset_leaves_the_child_free_to_map_the_file(tmp_path):
    """The child inherited the parent thread's 'being reset' mark, which nothing clears there:
    it could never map the file ('was reset ... 5 times') nor reset it."""
    path = tmp_path / "forked.bin"
    proc = run_python(f"""
        import os, threading, time, warnings, mmarray
        warnings.simplefilter("ignore", DeprecationWarning)
        path = {str(path)!r}
        stop = False
        def writer():
            while not stop:
                mmarray.open(path, mode="w+", shape=16 << 20).close()
        t = threading.Thread(target=writer)
        t.start()
        time.sleep(0.2)
        for attempt in range(30):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                msg = []
                try:
                    mmarray.open(path, mode="r").close()
                    msg.append("r ok")
                except Exception as exc:
                    msg.append(f"r {{type(exc).__name__}}: {{exc}}")
                try:
                    mmarray.open(path, mode="w+", shape=10).close()
                    msg.append("w+ ok")
                except ValueError as exc:
                    # a view the parent's writer had open at the fork is inherited, and
                    # counted: refusing to truncate under it is right; a stale mark is not
                    msg.append("w+ refused: live" if "live mapping" in str(exc)
                               else f"w+ ValueError: {{exc}}")
                os.write(w, "; ".join(msg).encode())
                os._exit(0)
            os.close(w)
            out = os.read(r, 10000).decode()
            os.close(r)
            os.waitpid(pid, 0)
            if not (out.startswith("r ok; ") and out.split("; ")[1] in ("w+ ok",
                                                                       "w+ refused: live")):
                print("BAD", attempt, out)
                break
        else:
            print("ok")
        stop = True
        t.join()
    """, timeout=180)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_bytes_subclass_path_works_in_every_mode(tmp_path):
    """np.bytes_ paths raised 'TypeError: Expected bytes, got numpy.bytes_' in mode 'w+'."""
    path = np.bytes_(os.fsencode(str(tmp_path / "b.bin")))
    with mmarray.open(path, mode="w+", shape=8) as m:
        m.array[:] = 3
    for mode in ("r", "r+", "c"):
        with mmarray.open(path, mode=mode) as m:
            assert m.array.tolist() == [3] * 8


@pytest.mark.skipif(not os.path.exists("/proc/self/mem"), reason="needs Linux /proc")
@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_proc_self_mem_is_never_grown_or_reset(mode):
    """Growing /proc/self/mem went through glibc's posix_fallocate emulation, which writes a
    zero byte per block: into this process's memory."""
    with pytest.raises(OSError, match="not a regular file") as info:
        mmarray.open("/proc/self/mem", mode=mode, shape=4096, offset=1 << 20)
    assert info.value.errno == errno.ENODEV


def test_asarray_of_a_mapping_follows_numpys_copy_protocol(tmp_path):
    m = mmarray.open(tmp_path / "a.bin", mode="w+", shape=8)
    assert m.__array__().dtype == np.uint8
    with pytest.raises(ValueError, match="without a copy"):
        m.__array__(np.float64, copy=False)
    assert m.__array__(np.float64).dtype == np.float64
    assert not np.shares_memory(m.__array__(copy=True), m.__array__())
    m.close()


# -- found by the second hostile review ---------------------------------------------------------

def test_copy_on_write_populate_racing_a_shrinking_w_plus_never_faults(tmp_path):
    """populate=True in mode 'c' read one byte per page (after MADV_POPULATE_READ failed with
    EFAULT past a concurrently shrunk end of file) before the view was registered: SIGBUS."""
    path = tmp_path / "cow.bin"
    proc = run_python(f"""
        import threading, time, mmarray
        path = {str(path)!r}
        big = 64 << 20
        mmarray.open(path, mode="w+", shape=big).close()
        stop = time.monotonic() + 6
        def reader():
            while time.monotonic() < stop:
                try:
                    mmarray.open(path, mode="c", populate=True).close()
                except (ValueError, OSError):
                    pass
        def writer():
            while time.monotonic() < stop:
                for n in (4096, big):
                    try:
                        mmarray.open(path, mode="w+", shape=n).close()
                    except (ValueError, OSError):
                        pass
        threads = [threading.Thread(target=reader) for _ in range(3)]
        threads.append(threading.Thread(target=writer))
        for t in threads: t.start()
        for t in threads: t.join()
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)


def test_a_failed_grow_never_shrinks_a_file_another_thread_grew_and_maps(tmp_path):
    """A grow failing with EFBIG 'restored' the size it had read before, truncating under the
    array of another thread that had grown the file meanwhile: SIGBUS."""
    path = tmp_path / "grow.bin"
    path.write_bytes(bytes(4096))
    proc = run_python(f"""
        import threading, time, mmarray
        path = {str(path)!r}
        stop = time.monotonic() + 5
        def grower():
            while time.monotonic() < stop:
                try:
                    m = mmarray.open(path, mode="r+", shape=4 << 20)
                except (ValueError, OSError):
                    continue
                a = m.array
                int(a[-1])
                del a
                m.close()
        def failer():
            while time.monotonic() < stop:
                try:
                    mmarray.open(path, mode="r+", shape=1 << 45)
                except OSError:
                    pass
        def resetter():
            while time.monotonic() < stop:
                try:
                    mmarray.open(path, mode="w+", shape=4096).close()
                except (ValueError, OSError):
                    pass
                time.sleep(0.001)
        threads = [threading.Thread(target=f) for f in (grower, failer, resetter)]
        for t in threads: t.start()
        for t in threads: t.join()
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)


@needs_fork
def test_fork_during_a_flush_in_another_thread_lets_the_child_close_and_reset(tmp_path):
    """The export a flush holds in another thread was inherited by the child, where no thread
    would ever release it: the region stayed mapped and registered, and 'w+' was refused."""
    path = tmp_path / "flush.bin"
    with open(path, "wb") as f:
        f.truncate(256 << 20)
    proc = run_python(f"""
        import gc, os, threading, time, warnings, mmarray
        warnings.simplefilter("ignore", DeprecationWarning)
        path = {str(path)!r}
        st = os.stat(path)
        m = mmarray.open(path, mode="r+")
        m.array[::4096] = 1                     # dirty every page: the flush takes a while
        t = threading.Thread(target=m.flush)
        t.start()
        time.sleep(0.02)
        pid = os.fork()
        if pid == 0:
            m.close(); del m; gc.collect()
            views = mmarray._engine.live_views(st.st_dev, st.st_ino)
            try:
                mmarray.open(path, mode="w+", shape=16).close()
                reset = "ok"
            except ValueError as exc:
                reset = str(exc)
            print(views, reset, flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
        t.join()
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split(None, 1) == ["0", "ok\n"]


# -- found by the third hostile review (the engine/policy split) ------------------------------

def test_shape_subclasses_cannot_show_the_size_check_another_shape(tmp_path):
    """A tuple subclass whose __iter__ and __getitem__ disagree, or an int subclass whose
    multiplication lies, made the engine build an array far larger than the mapping: a read
    of its last element segfaulted."""
    path = tmp_path / "s.bin"
    path.write_bytes(bytes(16))
    proc = run_python(f"""
        import numpy as np
        from mmarray import _engine
        from mmarray._mapping import map_region
        class T(tuple):
            def __iter__(self): return iter((16,))
            def __getitem__(self, i): return 1 << 40
            def __len__(self): return 1
        class I(int):
            def __rmul__(self, other): return other * 16
            def __mul__(self, other): return 16 * other
        for shape in (T((16,)), (I(1 << 40),), (I(16),)):
            try:
                m = map_region(path={str(path)!r}, access=_engine.READ, length=16,
                               dtype=np.dtype("u1"), shape=shape, mode="r", filename="s")
            except (TypeError, ValueError):
                continue
            a = m.array
            assert a.nbytes == 16 and type(m.shape) is tuple, (m.shape, a.shape)
            a[-1]
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok"


def test_map_file_refuses_a_class_whose_new_returns_a_live_mapping(tmp_path):
    """cls.__new__ returning an existing Mapping made map_file map over it: the old view
    leaked, and its file stayed registered ('w+' refused for the rest of the process)."""
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(bytes(64))
    second.write_bytes(bytes(64))
    live = mmarray.open(first, mode="r+")
    array = live.array

    class Reuse(mmarray.Mapping):
        __slots__ = ()

        def __new__(cls, *args):
            return live

    from mmarray._mapping import map_region
    with pytest.raises(TypeError, match="must return a new, bare Reuse"):
        map_region(path=str(second), access=_engine.WRITE, length=64, dtype=np.dtype("u1"),
                   shape=(64,), mode="r+", filename=str(second), cls=Reuse)
    assert live.exports == 1 and live.filename == str(first)
    del array
    live.close()
    st = os.stat(first)
    assert _engine.live_views(st.st_dev, st.st_ino) == 0
    mmarray.open(first, mode="w+", shape=8).close()


@needs_fork
def test_a_busy_export_dropped_by_a_fork_is_not_released_twice(tmp_path):
    """A fork inside a busy operation (here from the error factory) reset the busy count; the
    operation's own release then took the count of a prefetch the child had started, and the
    child's prefetch ran over unmapped memory (SIGSEGV)."""
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        f.truncate(256 << 20)
    proc = run_python(f"""
        import os, threading, time, warnings, numpy as np, mmarray
        from mmarray import _engine, _errors
        warnings.simplefilter("ignore", DeprecationWarning)
        m = mmarray.open({str(path)!r}, mode="r+")
        def factory(*args):
            if os.fork() == 0:
                prefetch = m.prefetch()
                m.close()            # deferred: the prefetch holds an export
                _engine.set_error_factory(_errors.from_status)
                def finish():
                    prefetch.wait()
                    os._exit(0 if m.exports == 0 else 3)
                threading.Thread(target=finish).start()
                return OSError("child")
            return OSError("parent")
        _engine.set_error_factory(factory)
        try:
            m._flush_bytes(0, 1 << 62, True)
        except (OSError, ValueError) as exc:
            if str(exc) == "child":
                time.sleep(30)       # the thread above ends the child
        _engine.set_error_factory(_errors.from_status)
        pid, status = os.wait()
        print(status)
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "0", proc.stdout


def test_error_factory_returning_a_non_exception_still_raises_the_error(tmp_path):
    from mmarray import _errors
    _engine.set_error_factory(lambda *args: None)
    try:
        with pytest.raises(OSError):
            mmarray.open(tmp_path / "missing.bin", mode="r")
    finally:
        _engine.set_error_factory(_errors.from_status)
