"""append_npy and the create-by-rename writers never lose data (audit 2, s20): bytes after the
data are refused unless they are an unfinished append's own leftover, appends from several
processes are serialized, long names and dangling symbolic links work as with np.save."""
import errno
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from numpy.lib import format as npformat

import mmarray
from mmarray import _append
from helpers import run_python

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

TIMEOUT = 120


def _two_arrays_in_one_file(path):
    with open(path, "wb") as f:
        np.save(f, np.arange(6, dtype="i8").reshape(3, 2))
        np.save(f, np.arange(100, 110, dtype="f8"))
    return path.read_bytes()


def _both_arrays(path):
    with open(path, "rb") as f:
        return np.load(f).tolist(), np.load(f).tolist()


@pytest.mark.parametrize("rows", [np.empty((0, 2), "i8"), np.full((1, 2), 7, "i8"),
                                  np.full((50, 2), 7, "i8")])
def test_append_refuses_bytes_after_data_and_leaves_file_unchanged(tmp_path, rows):
    path = tmp_path / "two.npy"
    before = _two_arrays_in_one_file(path)
    end = 128 + 6 * 8  # numpy's 128-byte header, then 3 x 2 int64
    with pytest.raises(ValueError) as info:
        mmarray.append_npy(path, rows)
    message = str(info.value)
    assert str(path) in message and f"byte {end}" in message and f"{len(before)} bytes" in \
        message and f"os.truncate(path, {end})" in message
    assert path.read_bytes() == before
    assert _both_arrays(path) == ([[0, 1], [2, 3], [4, 5]], [float(x) for x in range(100, 110)])


def test_append_refuses_bytes_after_data_also_when_the_header_would_be_rewritten(tmp_path):
    path = tmp_path / "tight.npy"
    text = b"{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n"  # no room to grow
    path.write_bytes(npformat.magic(1, 0) + len(text).to_bytes(2, "little") + text
                     + np.arange(2, dtype="i8").tobytes() + b"other data, not ours")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not the leftover of an unfinished append_npy"):
        mmarray.append_npy(path, np.arange(10**4, dtype="i8"))
    assert path.read_bytes() == before


def _crash(path, patch):
    """Run append_npy(path, [100..109]) in a child that dies (os._exit(9)) where ``patch``
    says."""
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        from mmarray import _append, _npyformat

        def die(*args):
            os._exit(9)
        {patch}
        mmarray.append_npy({str(path)!r}, np.arange(100, 110, dtype="i8"), sync=True)
    """, timeout=TIMEOUT)
    assert proc.returncode == 9, proc.stderr


@pytest.mark.parametrize("where, patch, seen", [
    ("before the header", "_npyformat.pwrite = die", list(range(10))),
    ("after the header, before the trailer is cut", "os.ftruncate = die",
     [*range(10), *range(100, 110)]),
])
def test_an_unfinished_appends_leftover_is_written_over_but_not_bytes_added_after_it(
        tmp_path, where, patch, seen):
    path = tmp_path / "c.npy"
    np.save(path, np.arange(10, dtype="i8"))
    _crash(path, patch)
    crashed = path.read_bytes()
    assert len(crashed) > 128 + len(seen) * 8           # bytes after the data: the leftover
    assert np.load(path).tolist() == seen
    with open(path, "ab") as f:                          # then someone else's bytes
        f.write(b"not ours")
    with pytest.raises(ValueError, match="not the leftover"):
        mmarray.append_npy(path, np.arange(50, 53, dtype="i8"))
    assert path.read_bytes() == crashed + b"not ours"
    os.truncate(path, len(crashed))
    assert mmarray.append_npy(path, np.arange(50, 53, dtype="i8")) == len(seen) + 3
    assert np.load(path).tolist() == [*seen, 50, 51, 52]
    assert path.stat().st_size == 128 + (len(seen) + 3) * 8  # and nothing after them


def test_a_leftover_whose_trailer_does_not_match_the_header_is_refused(tmp_path):
    path = tmp_path / "c.npy"
    np.save(path, np.arange(10, dtype="i8"))
    _crash(path, "_npyformat.pwrite = die")
    data = bytearray(path.read_bytes())
    data[-5] ^= 1                   # the trailer's own CRC-32 no longer holds
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not the leftover"):
        mmarray.append_npy(path, np.arange(3, dtype="i8"))
    assert path.read_bytes() == bytes(data)
    np.save(path, np.arange(11, dtype="i8"))  # another header than the trailer names
    with open(path, "ab") as f:
        f.write(bytes(data[128 + 80:]))       # the rows and the trailer of that crash
    data = path.read_bytes()
    with pytest.raises(ValueError, match="not the leftover"):
        mmarray.append_npy(path, np.arange(3, dtype="i8"))
    assert path.read_bytes() == data


def test_a_failed_write_of_the_rows_leaves_the_file_byte_for_byte_unchanged(tmp_path,
                                                                             monkeypatch):
    # Guards the trailer written before the rows (passes on the code before it, too).
    path = tmp_path / "f.npy"
    np.save(path, np.arange(10, dtype="i8"))
    before = path.read_bytes()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(_append, "_write_rows", full)
    with pytest.raises(OSError, match="No space"):
        mmarray.append_npy(path, np.arange(5, dtype="i8"))
    assert path.read_bytes() == before  # the trailer written first is gone again


# -- several processes appending at once -------------------------------------------------------

_WORKER = """
import os, sys, time
import numpy as np
import mmarray
path, go, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
while not os.path.exists(go):
    time.sleep(0.001)
for i in range(n):
    mmarray.append_npy(path, np.array([[tag, i]], dtype="i8"))
"""


@pytest.mark.parametrize("start", ["missing", "with room", "without room"])
@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_appends_from_processes_keep_every_row_once_in_order(tmp_path, start,
                                                                         workers):
    path = tmp_path / "conc.npy"
    first = []
    if start == "with room":
        np.save(path, np.array([[-1, 0]], dtype="i8"))
        first = [[-1, 0]]
    elif start == "without room":  # rewritten once, with room, while the others append
        text = b"{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }\n"
        path.write_bytes(npformat.magic(1, 0) + len(text).to_bytes(2, "little") + text
                         + np.array([-1, 0], dtype="i8").tobytes())
        first = [[-1, 0]]
    go = tmp_path / "go"
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WORKER), str(path),
                               str(go), str(tag), str(n)], stderr=subprocess.PIPE, text=True)
             for tag in range(1, workers + 1)]
    try:
        time.sleep(0.3)  # let them all wait for the signal
        go.write_bytes(b"")
        for p in procs:
            _, err = p.communicate(timeout=TIMEOUT)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    got = np.load(path)
    assert got.shape == (len(first) + workers * n, 2)
    assert got[:len(first)].tolist() == first
    for tag in range(1, workers + 1):
        assert got[got[:, 0] == tag, 1].tolist() == list(range(n))  # each once, in order
    assert path.stat().st_size == 128 + got.nbytes
    assert not [x for x in os.listdir(tmp_path) if x.endswith(".mmarray-tmp")]


# -- names and links ----------------------------------------------------------------------------

def _name_max(directory):
    try:
        return os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        return 255


WRITERS = {
    "create_npy": lambda p: mmarray.create_npy(p, "f8", 3).close(),
    "save_npz": lambda p: mmarray.save_npz(p, a=np.ones(3)),
    "append_npy": lambda p: mmarray.append_npy(p, np.ones(3)),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writers_create_a_file_whose_name_is_as_long_as_the_directory_allows(tmp_path,
                                                                             writer):
    path = tmp_path / ("y" * (_name_max(tmp_path) - 4) + ".npy")
    np.save(path, np.ones(3))  # numpy can
    path.unlink()
    WRITERS[writer](path)
    got = np.load(path)
    assert (got["a"] if writer == "save_npz" else got).tolist() == \
        ([0.0] * 3 if writer == "create_npy" else [1.0] * 3)
    assert os.listdir(tmp_path) == [path.name]  # no temporary left


def test_a_killed_writers_shortened_temporary_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / ("z" * (_name_max(tmp_path) - 4) + ".npy")
    child = subprocess.Popen([sys.executable, "-c", f"""if 1:
        import os, mmarray
        os.replace = lambda *args, **kwargs: os._exit(9)   # killed before the rename
        mmarray.create_npy({str(path)!r}, 'i2', 4)
    """])
    assert child.wait(timeout=TIMEOUT) == 9
    left = os.listdir(tmp_path)
    assert len(left) == 1 and left[0].endswith(".mmarray-tmp") and \
        len(os.fsencode(left[0])) <= _name_max(tmp_path)
    mmarray.create_npy(path, "i2", 4).close()
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_missing_directory_is_reported_naming_the_target_not_the_temporary(tmp_path,
                                                                             writer):
    path = tmp_path / "no such dir" / "x.npy"
    with pytest.raises(FileNotFoundError) as info:
        WRITERS[writer](path)
    assert info.value.filename == str(path) and "mmarray-tmp" not in str(info.value)


def test_append_creates_a_new_file_given_a_bytes_path(tmp_path):
    path = tmp_path / "b.npy"
    assert mmarray.append_npy(os.fsencode(path), np.arange(3)) == 3
    assert mmarray.append_npy(os.fsencode(path), np.arange(2)) == 5
    assert np.load(path).tolist() == [0, 1, 2, 0, 1]


def test_append_through_a_dangling_symlink_creates_its_target(tmp_path):
    link, target = tmp_path / "link.npy", tmp_path / "sub" / "target.npy"
    target.parent.mkdir()
    link.symlink_to(os.path.join("sub", "target.npy"))  # relative, as ln -s makes them
    assert mmarray.append_npy(link, np.arange(3)) == 3
    assert link.is_symlink() and target.is_file()
    assert mmarray.append_npy(link, np.arange(2)) == 5
    assert link.is_symlink() and np.load(target).tolist() == [0, 1, 2, 0, 1]
    assert sorted(os.listdir(tmp_path)) == ["link.npy", "sub"]
    assert os.listdir(target.parent) == ["target.npy"]


def test_append_through_a_symlink_into_a_missing_directory_raises_naming_the_link(tmp_path):
    link = tmp_path / "link.npy"
    link.symlink_to(tmp_path / "gone" / "target.npy")
    with pytest.raises(FileNotFoundError) as info:
        mmarray.append_npy(link, np.arange(3))
    assert info.value.filename == str(link) and "gone" in str(info.value)
    assert link.is_symlink() and os.listdir(tmp_path) == ["link.npy"]


# -- exceptions landing anywhere (the fault guard raises asynchronously) ------------------------

# Run in a subprocess before each sweep below: an exception raised by a tracer inside an
# except block can leave the interpreter's handled-exception state behind for later tests.
_SWEEP_PRELUDE = """
import dis, fcntl, gc, os, sys, warnings
import numpy as np
import mmarray

NOP = dis.opmap["NOP"]


class Landed(Exception):
    pass


def raising_at(k, names, modules):
    # A sys.settrace tracer raising Landed at the k-th opcode (from 1) that the functions
    # `names` of the modules `modules` run. Not at a NOP: where a try starts, CPython 3.11's
    # exception table covers none (an exception there skips every handler), and no
    # asynchronous exception is delivered at one (the eval breaker is checked at calls and
    # backward jumps only).
    seen = [0]

    def tracer(frame, event, arg):
        if frame.f_code.co_name not in names or frame.f_globals.get("__name__") not in modules:
            return None
        frame.f_trace_opcodes = True

        def local(frame, event, arg):
            if event == "opcode" and frame.f_code.co_code[frame.f_lasti] != NOP:
                seen[0] += 1
                if seen[0] == k:
                    raise Landed(k)
            return local
        return local
    return tracer


def run_interrupted(k, names, modules, call):
    # call() with an exception raised at its k-th opcode; whether one was.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # a FileIO closed when freed
        sys.settrace(raising_at(k, names, modules))
        try:
            call()
        except Landed:
            return True
        finally:
            sys.settrace(None)
            gc.collect()
    return False


def descriptors(path):
    real = os.path.realpath(path)
    return [fd for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == real]


def check_unlocked(path, k):
    probe = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"locked after an exception at opcode {k}")
    finally:
        os.close(probe)


def temporaries(path):
    return [n for n in os.listdir(os.path.dirname(path)) if n.endswith("mmarray-tmp")]


NO_ROOM = b"{'descr': '<f4', 'fortran_order': False, 'shape': (9, 3), }\\n"


def write_without_room(path):  # no padding: 10 rows take a digit more than the header holds
    with open(path, "wb") as f:
        f.write(b"\\x93NUMPY\\x01\\x00" + len(NO_ROOM).to_bytes(2, "little") + NO_ROOM
                + np.zeros((9, 3), "f4").tobytes())
"""


def _check_sweep(proc, shapes_then_last):
    """A sweep's subprocess ran through, past 50 opcodes, and printed the shapes seen."""
    assert proc.returncode == 0, proc.stderr
    k, rest = proc.stdout.split(" ", 1)
    assert int(k) > 50                                            # it went through the code
    assert rest.strip() == shapes_then_last, proc.stdout


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or fcntl is None,
                    reason="needs /proc/self/fd and flock")
@pytest.mark.parametrize("room", [True, False], ids=["header with room", "header rewritten"])
def test_an_exception_at_any_bytecode_of_an_append_leaves_no_descriptor_and_no_lock(tmp_path,
                                                                                    room):
    # The fault guard's MappedFileError (and KeyboardInterrupt) can arrive between any two
    # bytecodes. Landing between os.open and its try, or inside the unlock-and-close, leaked
    # the descriptor with its flock(2) lock held: every later append_npy of the file hung.
    # Here an exception is raised at the k-th opcode that append_npy's own functions run,
    # for every k until an append runs through.
    # Without room in the header the file is rewritten under a temporary name first
    # (_with_room), whose descriptor is locked and handed over: that one too (review).
    path = tmp_path / "a.npy"
    proc = run_python(_SWEEP_PRELUDE + f"""
path = {str(path)!r}
names = {{"append_npy", "_append", "_lock", "_unlock", "_release", "_stat_if_at",
         "_grown_header", "_padded", "_write_rows", "_write_at", "_leftover", "_with_room",
         "temp_sibling_file", "_temp_names", "replace_durably", "fsync_directory", "discard"}}
modules = ("mmarray._append", "mmarray._npyformat")
shapes = set()
k = 1
while True:
    if {room!r}:
        np.save(path, np.zeros((9, 3), "f4"))
    else:
        write_without_room(path)
    landed = run_interrupted(k, names, modules,
                             lambda: mmarray.append_npy(path, np.ones((1, 3), "f4")))
    assert descriptors(path) == [], k
    check_unlocked(path, k)
    assert temporaries(path) == [], (k, temporaries(path))
    shapes.add(np.load(path).shape)                          # a valid .npy at every k
    if not landed:
        break
    k += 1
print(k, sorted(shapes), np.load(path).shape)
""", timeout=TIMEOUT)
    _check_sweep(proc, "[(9, 3), (10, 3)] (10, 3)")


def test_rows_from_a_truncated_mapping_raise_naming_the_file_and_leave_it_as_it_was(tmp_path):
    # write(2) from pages past the end of a mapped file returns EFAULT (no SIGBUS): the
    # error was a bare OSError(14, 'Bad address') without a file name.
    src, dst = tmp_path / "src.f4", tmp_path / "dst.npy"
    proc = run_python(f"""
        import errno, os
        import numpy as np
        import mmarray
        src, dst = {str(src)!r}, {str(dst)!r}
        m = mmarray.open(src, dtype="f4", mode="w+", shape=(4096, 4))
        m.array[:] = 1
        m.flush()
        a = m.array
        os.truncate(src, 0)               # the mapped source is cut (by another process)
        np.save(dst, np.zeros((1, 4), "f4"))
        before = open(dst, "rb").read()
        try:
            mmarray.append_npy(dst, a)
            print("appended")
        except OSError as exc:
            assert exc.errno == errno.EFAULT and exc.filename == dst, (exc, exc.filename)
            assert "truncated" in str(exc) and "left as it was" in str(exc), str(exc)
            print("raised")
        assert open(dst, "rb").read() == before
        print("unchanged")
    """, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["raised", "unchanged"], proc.stdout


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd") or fcntl is None,
                    reason="needs /proc/self/fd and flock")
def test_an_exception_at_any_bytecode_of_a_resize_leaves_the_file_unlocked_and_mapped(tmp_path):
    # NpyMapping.resize of a .npy whose header has no room rewrites it into a copy (locked,
    # _with_room) and moves the mapping onto the copy. The mapping was made from the locked
    # descriptor, so it shared the open file that holds the flock(2) lock: an exception
    # landing before the explicit unlock left the file locked for as long as the mapping
    # lived, and every append_npy of it waited (helper-49's review). And one landing after
    # the copy was renamed over the name but before the mapping moved left the mapping on
    # the unlinked old file: later writes and flushes were lost, later resizes refused
    # (helper-51's review). So at every opcode: the file is not locked, the mapping writes
    # to the file at the name, resizes again, and leaves no descriptor nor temporary. In a
    # subprocess: an exception raised by a tracer inside an except block can leave the
    # interpreter's handled-exception state behind for later tests.
    path = tmp_path / "r.npy"
    proc = run_python(_SWEEP_PRELUDE + f"""
path = {str(path)!r}
names = {{"resize", "_resize_npy", "_check_cut", "_lock", "_unlock", "_release", "_with_room",
         "_grown_header", "_discard_unrenamed", "_leads_to", "fsync_directory",
         "replace_durably", "temp_sibling_file", "_temp_names", "discard", "named_error"}}
modules = ("mmarray._append", "mmarray._npy", "mmarray._npyformat", "mmarray._mapping")
shapes = set()
k = 1
while True:
    write_without_room(path)
    m = mmarray.load(path, mode="r+")
    landed = run_interrupted(k, names, modules, lambda: m.resize((10, 3)))
    check_unlocked(path, k)                                   # while the mapping lives
    shapes.add(np.load(path).shape)                           # a valid .npy at every k
    m.array[0, 0] = k                                         # reaches the file at the name
    m.flush()
    if np.load(path)[0, 0] != k:
        sys.exit(f"a write after an exception at opcode {{k}} was lost")
    rows = m.shape[0]
    m.resize(rows + 1)                                        # not refused
    m.array[rows, 0] = -k
    m.flush()
    if np.load(path)[rows, 0] != -k:
        sys.exit(f"a resize after an exception at opcode {{k}} wrote elsewhere")
    m.close()
    assert descriptors(path) == [], k
    assert temporaries(path) == [], (k, temporaries(path))
    if not landed:
        break
    k += 1
print(k, sorted(shapes), np.load(path).shape)
""", timeout=TIMEOUT)
    _check_sweep(proc, "[(9, 3), (10, 3)] (11, 3)")


def test_a_temporary_copy_swapped_before_its_reopen_is_refused_and_left_alone(tmp_path,
                                                                               monkeypatch):
    # _with_room(reopen=True) opens its temporary copy a second time, to map it from; if the
    # name leads to another file by then, it refuses, and must not remove that file, which
    # is not ours (helper-51's review).
    path = tmp_path / "r.npy"
    np.save(path, np.zeros((2, 3), "f4"))
    lock = _append._lock
    swapped = []

    def lock_then_swap(fd):
        lock(fd)
        (tmp,) = [p for p in tmp_path.iterdir() if p.name.endswith(".mmarray-tmp")]
        other = tmp_path / "other"
        other.write_bytes(b"someone else's")
        os.replace(other, tmp)
        swapped.append(tmp)

    monkeypatch.setattr(_append, "_lock", lock_then_swap)
    fd = os.open(path, os.O_RDWR)
    try:
        hlen = 128  # np.save's header for this array: data at byte 128
        with pytest.raises(ValueError, match="was replaced while it was being written"):
            _append._with_room(fd, str(path), np.dtype("f4"), (2, 3), "C", hlen, 24,
                               repr(str(path)), reopen=True)
    finally:
        os.close(fd)
    assert swapped and swapped[0].read_bytes() == b"someone else's"   # left alone
    assert np.load(path).shape == (2, 3)                              # the file as it was


def _crash_resize(path, patch, rows, truncate=False):
    """Run load(path, 'r+').resize(rows, truncate=truncate) in a child that dies
    (os._exit(9)) where ``patch`` says."""
    proc = run_python(f"""
        import os
        import mmarray
        from mmarray import _npyformat

        def die(*args):
            os._exit(9)
        m = mmarray.load({str(path)!r}, mode="r+")
        {patch}
        m.resize({rows}, truncate={truncate})
    """, timeout=TIMEOUT)
    assert proc.returncode == 9, proc.stderr


@pytest.mark.parametrize("rows, truncate, patch, rows_after, size", [
    # A growth to 200 rows; helper-63: it wrote no trailer, so the zeros past the data (or
    # the header's new rows) left a file that append_npy and resize refused for good.
    (200, False, "_npyformat.pwrite = die", 10, 128 + 2400 + 44),   # before the header
    (200, False, "os.ftruncate = die", 200, 128 + 2400 + 44),      # before the trailer's cut
    # A shrink to 4 rows with truncate; helper-63 finding 2: killed between the header and
    # the cut, it left the dropped rows after the data, refused the same way. A trailer past
    # the old end now names both states until the cut.
    (4, True, "_npyformat.pwrite = die", 10, 128 + 120 + 44),      # before the header
    (4, True, "os.ftruncate = die", 4, 128 + 120 + 44),            # before the cut
])
def test_a_resize_killed_midway_leaves_a_file_the_next_append_or_resize_takes(
        tmp_path, rows, truncate, patch, rows_after, size):
    data = np.arange(30, dtype="i4").reshape(10, 3)
    kept = data[:min(rows_after, 10)]
    for then in ("append", "resize"):
        path = tmp_path / f"{then}.npy"
        np.save(path, data)
        _crash_resize(path, patch, rows, truncate)
        seen = np.load(path)
        assert seen.shape == (rows_after, 3) and np.array_equal(seen[:len(kept)], kept)
        assert path.stat().st_size == size  # the rows and the trailer
        _grow_by_one_row_after_a_crash(path, then, kept, rows_after)


def _grow_by_one_row_after_a_crash(path, then, kept, rows_after):
    """append_npy (``then`` 'append') or resize one row of 7s onto the (10, 3) int32 file a
    crashed resize left with ``rows_after`` rows, the first of them ``kept``; check that
    nothing is left after the new row."""
    if then == "append":
        assert mmarray.append_npy(path, np.full((1, 3), 7, "i4")) == rows_after + 1
    else:
        with mmarray.load(path, mode="r+") as m:
            m.resize(rows_after + 1)
            m.array[-1] = 7
    grown = np.load(path)
    assert grown.shape == (rows_after + 1, 3) and np.array_equal(grown[:len(kept)], kept)
    assert grown[-1].tolist() == [7, 7, 7]
    assert path.stat().st_size == 128 + (rows_after + 1) * 12  # nothing after them


def test_a_resize_grows_a_file_an_unfinished_append_left(tmp_path):
    path = tmp_path / "r.npy"
    np.save(path, np.arange(10, dtype="i8"))
    _crash(path, "_npyformat.pwrite = die")  # the rows and trailer written, not the header
    with mmarray.load(path, mode="r+") as m:
        m.resize(12)
        m.array[10:] = [5, 6]
    assert np.load(path).tolist() == [*range(10), 5, 6]
    assert path.stat().st_size == 128 + 12 * 8


def _resize_under_a_file_size_limit(path, call, limit):
    """Run ``call`` (on ``m``, the .npy at ``path`` loaded 'r+') in a child whose files
    cannot grow past ``limit`` bytes; return the lines it printed (OSError's errno if it
    raised, then m.shape)."""
    proc = run_python(f"""
        import resource
        import mmarray
        m = mmarray.load({str(path)!r}, mode="r+")
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        try:
            {call}
        except OSError as exc:
            print("refused", exc.errno)
        print(m.shape)
    """, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split("\n")


def test_a_resize_whose_trailer_write_fails_leaves_the_file_as_it_was(tmp_path):
    # Helper-64: the trailer was written outside the resize's try, so a short write (a
    # file-size limit, a disk full mid-write) left zeros and half a trailer no later call took.
    path = tmp_path / "f.npy"
    np.save(path, np.arange(30, dtype="i4").reshape(10, 3))
    before = path.read_bytes()
    # the trailer at byte 368 crosses the limit after 22 bytes
    lines = _resize_under_a_file_size_limit(path, "m.resize(20)", 390)
    assert lines[0].startswith("refused") and lines[1] == "(10, 3)", lines
    assert path.read_bytes() == before
    with mmarray.load(path, mode="r+") as m:
        m.resize(20)
    assert np.load(path).shape == (20, 3)


def test_a_shrink_with_truncate_needs_no_room_to_grow(tmp_path):
    # Helper-66: the trailer a shrink writes past the old end made a shrink with truncate
    # fail where the file cannot grow 44 bytes (a full disk, which a shrink is often meant to
    # relieve; a file-size limit): with no room it shrinks unmarked, header then cut.
    path = tmp_path / "f.npy"
    np.save(path, np.arange(30, dtype="i4").reshape(10, 3))
    # the trailer at byte 248 (the old end) crosses the limit after 12 bytes
    lines = _resize_under_a_file_size_limit(path, "m.resize(4, truncate=True)", 260)
    assert lines[0] == "(4, 3)", lines
    assert np.load(path).tolist() == np.arange(12).reshape(4, 3).tolist()
    assert path.stat().st_size == 128 + 48


@pytest.fixture
def sealed_npy():
    """A function sealing a new memfd holding a (10, 3) int32 .npy with the F_SEAL_ names
    it is given; returns (fd, path). Closed at the end of the test."""
    if not hasattr(os, "memfd_create") or fcntl is None or not hasattr(fcntl, "F_SEAL_GROW"):
        pytest.skip("needs memfd_create and file seals (Linux)")
    fds = []

    def make(*seals):
        fd = os.memfd_create("x.npy", os.MFD_ALLOW_SEALING)
        fds.append(fd)
        path = f"/proc/self/fd/{fd}"
        with open(path, "wb") as f:
            np.save(f, np.arange(30, dtype="i4").reshape(10, 3))
        flags = 0
        for seal in seals:
            flags |= getattr(fcntl, f"F_SEAL_{seal}")
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, flags)
        return fd, path
    yield make
    for fd in fds:
        os.close(fd)


def test_a_shrink_with_truncate_works_on_a_file_sealed_against_growth(sealed_npy):
    fd, path = sealed_npy("GROW")
    with mmarray.load(path, mode="r+") as m:
        m.resize(4, truncate=True)
        assert m.array.tolist() == np.arange(12).reshape(4, 3).tolist()
    assert os.fstat(fd).st_size == 128 + 48


def test_a_shrink_with_truncate_that_can_neither_mark_nor_cut_leaves_the_file_as_it_was(
        sealed_npy):
    # Helper-68: with no room for the trailer the shrink went on unmarked, and when its cut
    # then failed too the file kept the new header and, after it, rows nothing recognised.
    fd, path = sealed_npy("GROW", "SHRINK")
    before = os.pread(fd, 1000, 0)
    with mmarray.load(path, mode="r+") as m:
        with pytest.raises(PermissionError):
            m.resize(4, truncate=True)
        assert os.pread(fd, 1000, 0) == before and m.shape == (10, 3)
        m.resize(8)  # without truncate: the header alone
        assert m.array.tolist() == np.arange(24).reshape(8, 3).tolist()


def test_a_read_only_npy_mapping_refuses_a_shrink_with_truncate_naming_its_mode(tmp_path):
    # Helper-66: the truncating shrink skipped Mapping.resize and its mode check; a mapping
    # unpickled with mode 'r' then failed in the engine with EINVAL after writing the header.
    path = tmp_path / "f.npy"
    np.save(path, np.arange(30, dtype="i4").reshape(10, 3))
    before = path.read_bytes()
    writable = mmarray.load(path, mode="r+")
    rebuild, args = writable.__reduce__()
    writable.close()
    args = list(args)
    args[args.index("r+")] = "r"
    m = rebuild(*args)
    assert m.mode == "r"
    for kwargs in ({}, {"truncate": True}):
        with pytest.raises(ValueError, match="resize needs a writable mapping"):
            m.resize(4, **kwargs)
    assert path.read_bytes() == before
    m.close()


def test_a_stale_trailer_does_not_let_a_later_grow_cut_rows_a_shrink_left(tmp_path):
    # Helper-64: killed after its header, a growth left its trailer; rows written, then a
    # shrink without truncate wrote the old header back, and the next grow took the stale
    # trailer as a leftover and cut the rows. Every resize now clears a leftover first.
    path = tmp_path / "s.npy"
    np.save(path, np.arange(30, dtype="i4").reshape(10, 3))
    _crash_resize(path, "os.ftruncate = die", 20)
    with mmarray.load(path, mode="r+") as m:
        m.array[10:] = 7
        m.flush()
        m.resize(10)  # the rows 10..19 stay in the file, after the data
    kept = path.read_bytes()
    with mmarray.load(path, mode="r+") as m:
        with pytest.raises(ValueError, match="refusing to grow it"):
            m.resize(12)
    assert path.read_bytes() == kept
    assert np.frombuffer(kept[128 + 120:], dtype="i4").tolist() == [7] * 30


def test_a_shrink_with_truncate_that_fails_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "f.npy"
    np.save(path, np.arange(30, dtype="i4").reshape(10, 3))
    before = path.read_bytes()
    with mmarray.load(path, mode="r+") as m:
        a = m.array   # alive over the part the cut would drop: the engine refuses
        monkeypatch.setattr(type(m), "_check_cut", lambda *args: None)  # refused later, then
        with pytest.raises(BufferError, match="array"):
            m.resize(4, truncate=True)
        assert m.shape == (10, 3) and path.read_bytes() == before
        del a
        monkeypatch.undo()
        m.resize(4, truncate=True)
    assert np.load(path).tolist() == np.arange(12).reshape(4, 3).tolist()
    assert path.stat().st_size == 128 + 48
