"""The fault guard (issue #11): a SIGBUS in an mmarray mapping raises MappedFileError in the
thread that faulted; every other SIGBUS still ends the process. Each case runs in a
subprocess with a timeout and checks its exit code."""
import os
import signal
import subprocess
import textwrap

import pytest

from helpers import assert_clean_exit, run_python

pytestmark = pytest.mark.skipif(os.name == "nt", reason="the fault guard is POSIX only")

# Prepended to every script: a 64 MiB file of ones, mapped, then truncated to 4 KiB by
# another process.
SETUP = """
import os, subprocess, sys, threading, time
import numpy as np
import mmarray

PATH = {path!r}
SIZE = 64 << 20

def fresh(mode="r+", dtype="f8"):
    with open(PATH, "wb") as f:
        f.truncate(SIZE)
    with mmarray.open(PATH, dtype="f8", mode="r+") as w:
        w.array[:] = 1
    return mmarray.open(PATH, dtype=dtype, mode=mode)

def truncate_elsewhere(size=4096):
    subprocess.run([sys.executable, "-c", f"import os; os.truncate({{PATH!r}}, {{size}})"],
                   check=True)

def settle():
    time.sleep(0.5)  # the exception is delivered at the thread's next chance: give it one
"""


def run_case(tmp_path, body, timeout=120, env=None):
    script = SETUP.format(path=str(tmp_path / "data.f8")) + textwrap.dedent(body)
    return run_python(script, timeout=timeout, env=env)


@pytest.mark.parametrize("operation, expected", [
    ("a = m.array; float(a.sum())", "raises"),
    ("a = m.array; a[:] = 2.0", "raises"),
    ("sum(float(c.sum()) for c in m.chunks(1 << 16))", "raises"),
    ("m.prefetch().wait()", "raises"),
    ("m.resident()", "returns"),
    ("m.array[:2] = 3.0; m.array[-1] = 3.0; m.flush()", "raises"),
])
def test_operation_on_a_file_truncated_by_another_process_raises(tmp_path, operation,
                                                                   expected):
    proc = run_case(tmp_path, f"""
        m = fresh()
        truncate_elsewhere()
        try:
            {operation}
            settle()
            print("returned")
        except mmarray.MappedFileError as exc:
            assert exc.filename == PATH, exc.filename
            assert exc.range[0] % 4096 == 0 and exc.range[1] > exc.range[0] >= 0, exc.range
            print("raised", exc)
        print("faulted", m.faulted)
    """)
    assert_clean_exit(proc)
    lines = proc.stdout.splitlines()
    if expected == "raises":
        assert lines[0].startswith("raised"), proc.stdout
        assert lines[-1] == "faulted True"
    else:
        assert lines == ["returned", "faulted False"], proc.stdout


def test_close_of_a_writable_mapping_that_faulted_raises_and_closes(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh()
        truncate_elsewhere()
        try:
            m.array[-1] = 5.0   # lost: the page is past the end of the file now
            settle()
        except mmarray.MappedFileError:
            pass
        try:
            m.close()
            raise SystemExit("close() did not raise")
        except mmarray.MappedFileError as exc:
            assert "close()" in str(exc)
        assert m.closed
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_read_only_mapping_that_faulted_closes_quietly_and_reads_zeros(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh(mode="r")
        truncate_elsewhere()
        a = m.array
        try:
            total = float(a.sum()); settle()
        except mmarray.MappedFileError:
            pass
        assert m.faulted and float(a[4096 // 8:].sum()) == 0.0  # zeros, not stale data
        assert float(a[:4096 // 8].sum()) == 512.0                # the page still in the file
        m.close()
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_r_plus_npz_member_that_faulted_raises_on_close_and_keeps_its_crc(tmp_path):
    proc = run_case(tmp_path, """
        import zipfile
        npz = PATH + ".npz"
        np.savez(npz, x=np.ones(1 << 20))
        with zipfile.ZipFile(npz) as z:
            crc = z.getinfo("x.npy").CRC
        archive = mmarray.load(npz, mode="r+")
        member = archive["x"]
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({npz!r}, 8192)"],
                       check=True)
        try:
            member.array[:] = 2.0
            settle()
        except mmarray.MappedFileError:
            pass
        try:
            member.close()
            raise SystemExit("close() did not raise")
        except mmarray.MappedFileError:
            pass
        archive.close()
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split()[-1] == "ok"


def test_fault_in_a_worker_thread_raises_there_not_in_the_main_thread(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh(mode="r")
        truncate_elsewhere()
        caught = []
        def work():
            try:
                float(m.array.sum()); settle()
            except mmarray.MappedFileError:
                caught.append(threading.current_thread().name)
        t = threading.Thread(target=work, name="reader")
        t.start(); t.join()
        settle()  # the main thread gets nothing
        print(caught)
    """)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "['reader']"


def test_a_sigbus_outside_any_mapping_still_kills_with_faulthandler_traceback(tmp_path):
    proc = run_case(tmp_path, """
        import faulthandler, signal
        faulthandler.enable()
        m = fresh()   # the guard is installed, behind... no: in front of faulthandler
        os.kill(os.getpid(), signal.SIGBUS)
        time.sleep(5)
        print("survived")
    """)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert "Fatal Python error: Bus error" in proc.stderr
    assert "survived" not in proc.stdout


def test_a_fault_in_a_stdlib_mmap_still_kills(tmp_path):
    proc = run_case(tmp_path, """
        import mmap
        m = fresh()   # the guard is installed
        with open(PATH, "r+b") as f:
            raw = mmap.mmap(f.fileno(), 0)
        truncate_elsewhere()
        raw[SIZE - 1]
        print("survived")
    """)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert "survived" not in proc.stdout


def test_guard_installed_before_faulthandler_is_put_back_in_front(tmp_path):
    proc = run_case(tmp_path, """
        import faulthandler
        first = fresh(mode="r")     # installs the guard
        faulthandler.enable()       # now faulthandler is in front
        time.sleep(0.2)             # the guard re-checks at most every 100 ms
        m = fresh(mode="r")         # this map puts the guard back in front
        truncate_elsewhere()
        try:
            float(m.array.sum()); settle()
        except mmarray.MappedFileError:
            print("raised")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["raised"]


@pytest.mark.parametrize("how", ["set_fault_guard(False)", "MMARRAY_FAULT_GUARD=0"])
def test_guard_turned_off_gives_the_plain_sigbus_back(tmp_path, how):
    env = {"MMARRAY_FAULT_GUARD": "0"} if how.startswith("MMARRAY") else None
    off = "mmarray.set_fault_guard(False)" if env is None else ""
    proc = run_case(tmp_path, f"""
        {off}
        m = fresh(mode="r")
        truncate_elsewhere()
        float(m.array.sum())
        print("survived")
    """, env=env)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert "survived" not in proc.stdout


def test_guard_in_a_forked_child_raises_there(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh(mode="r")
        pid = os.fork()
        if pid == 0:
            try:
                truncate_elsewhere()
                float(m.array.sum()); settle()
                os._exit(3)
            except mmarray.MappedFileError:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"]


def test_a_child_forked_with_a_fault_still_queued_is_told_of_its_own(tmp_path):
    """The parent's record, not yet taken at the fork, was the forking thread's current run in
    the view: the child's fault there queued nothing, and the child was never told."""
    proc = run_case(tmp_path, """
        import ctypes
        m = fresh(mode="r")
        truncate_elsewhere()
        byte = ctypes.create_string_buffer(1)
        def touch(page):  # one byte read in C: the exception, if any, comes after
            ctypes.memmove(byte, m.array.ctypes.data + page * 4096, 1)
        from mmarray import _guard
        with _guard._lock:    # the dispatcher cannot take the record before the fork
            touch(8)
            pid = os.fork()
        if pid == 0:
            try:
                touch(16)
                settle()
                os._exit(3)
            except mmarray.MappedFileError as e:
                os._exit(0 if e.range[0] == 16 * 4096 else 4)
        try:
            settle()
        except mmarray.MappedFileError:
            pass              # the parent's own fault
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status))
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"]


# An early after-fork hook (registered before mmarray) faults in the child; a later one,
# from Python or from C, takes a while. No point inside fork() is safe for an exception:
# raised in the later hook it would end that hook (and be swallowed as unraisable), raised at
# fork()'s return the child would take the OSError for a failed fork. So that fault is not
# raised (the mapping says `faulted`), and the child's next fault, once fork() returned, is.
_EARLY_FAULT_THEN_SLOW_HOOK = """
import ctypes, functools, os, subprocess, sys, time
state = {{}}
def touch(page):  # one byte read in C: the exception, if any, comes after
    ctypes.memmove(state["byte"], state["m"].array.ctypes.data + page * 4096, 1)
def touch_in_child():  # registered first: runs before mmarray's hook
    if state.get("m") is not None:
        touch(16)
os.register_at_fork(after_in_child=touch_in_child)
import mmarray
def slow_python_hook():
    time.sleep(0.02)   # blocks: the reader gets the GIL meanwhile
    for _ in range(200000):
        pass           # and runs past the switch interval
    state["later hook done"] = True
if {kind!r} == "python":
    os.register_at_fork(after_in_child=slow_python_hook)
elif {kind!r} == "c":  # a hook that is C code (no Python frame of its own)
    os.register_at_fork(after_in_child=functools.partial(time.sleep, 0.05))
with open({path!r}, "wb") as f:
    f.truncate(1 << 20)
m = mmarray.open({path!r}, mode="r")
subprocess.run([sys.executable, "-c", "import os; os.truncate({path!r}, 4096)"], check=True)
state["byte"] = ctypes.create_string_buffer(1)
state["m"] = m
try:
    pid = os.fork()
except OSError as exc:
    print("fork raised", repr(exc), flush=True)
    os._exit(5)
if pid == 0:
    if {kind!r} == "python" and not state.get("later hook done"):
        os._exit(6)    # the later hook was cut short
    try:
        time.sleep(0.3)
    except mmarray.MappedFileError:
        os._exit(7)    # the hook's fault raised after all
    if not m.faulted:
        os._exit(8)
    try:
        touch(20)      # a fault of the child's own code: raised
        time.sleep(0.5)
        os._exit(3)
    except mmarray.MappedFileError as e:
        os._exit(0 if e.range[0] == 20 * 4096 else 4)
state.clear()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("kind", ["no later hook", "python", "c"])
def test_a_fault_in_an_earlier_after_fork_hook_is_not_raised_inside_fork(tmp_path, kind):
    path = str(tmp_path / "data.bin")
    proc = run_python(_EARLY_FAULT_THEN_SLOW_HOOK.format(kind=kind, path=path), timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"], proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


def test_an_after_fork_hook_before_mmarrays_never_waits_for_the_parents_lock(tmp_path):
    """Another thread of the parent held the guard's lock at the fork. An after-fork hook
    that runs before mmarray's own (registered before mmarray was imported) and reaches the
    guard (a flush() of a faulted mapping goes through it) used the inherited lock, which no
    thread of the child will ever release: the child hung."""
    proc = run_python("""
        import os, sys, threading, time
        def early_hook():
            sys.modules["mmarray._guard"].dispatch()  # what error() and flush() go through
        os.register_at_fork(after_in_child=early_hook)
        import mmarray
        from mmarray import _guard
        held, release = threading.Event(), threading.Event()
        def holder():
            with _guard._lock:
                held.set()
                release.wait()
        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        release.set()
        t.join()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                print(os.waitstatus_to_exitcode(status))
                break
            time.sleep(0.05)
        else:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            print("the child hung")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["0"], proc.stdout + proc.stderr


def test_readers_racing_truncations_never_crash_or_hang(tmp_path):
    """4 threads read while another process truncates and regrows the file 200 times.

    Each thread that faulted hears of it, and no fault is reported twice: at most one
    exception per mapping that faulted (fewer when an exception comes late, after the thread
    faulted in its next mapping too: one exception then reports both)."""
    proc = run_case(tmp_path, """
        fresh().close()
        stop = threading.Event()
        raised, mapped = {}, []
        def reads(me):
            while True:
                if stop.is_set():
                    settle()    # a last fault's exception arrives in here
                    return
                try:
                    m = mmarray.open(PATH, dtype="f8", mode="r", shape=SIZE // 8)
                except mmarray.MappedFileError:
                    raise
                except (ValueError, OSError):
                    m = None    # caught the file short: mapping it is refused
                if m is None:
                    continue
                # Counted at the end, from the mappings (faulted is kept after close):
                # counted in the finally below, a late exception landing there before the
                # count made a fault look reported twice.
                mapped.append((me, m))
                try:
                    float(m.array[::512].sum())   # one element per page
                finally:
                    m.close()
        def reader():
            # The exception is asynchronous: it comes up where the thread runs Python code,
            # at a loop's back edge too, and CPython 3.11 and 3.12 raise it there as if
            # outside a `try` around the loop (python/cpython#108214). The loop runs in a
            # function called inside the `try`: the exception leaves that call.
            me = threading.get_ident()
            while True:
                try:
                    reads(me)
                    return
                except mmarray.MappedFileError:
                    raised[me] = raised.get(me, 0) + 1
        threads = [threading.Thread(target=reader) for _ in range(4)]
        for t in threads:
            t.start()
        churn = subprocess.run([sys.executable, "-c",
                                f"import os, time\\nfor _ in range(200): "
                                f"os.truncate({PATH!r}, 4096); time.sleep(0.003); "
                                f"os.truncate({PATH!r}, {SIZE}); time.sleep(0.001)"],
                               timeout=120)
        stop.set()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a reader hung"
        assert churn.returncode == 0
        for t in threads:
            print(sum(m.faulted for me, m in mapped if me == t.ident), raised.get(t.ident, 0))
    """, timeout=240)
    assert_clean_exit(proc)
    counts = [tuple(map(int, line.split())) for line in proc.stdout.splitlines()]
    assert len(counts) == 4 and sum(faulted for faulted, _ in counts) > 0, counts
    for faulted, raised in counts:  # per thread: told if it faulted, never told twice
        assert (raised == 0) if faulted == 0 else (1 <= raised <= faulted), counts


def _can_mount_tmpfs(where):
    if os.geteuid() != 0:
        return False
    os.makedirs(where, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)],
                        capture_output=True).returncode == 0
    return ok


def test_write_into_a_hole_on_a_full_filesystem_raises(tmp_path):
    mount = tmp_path / "small"
    if not _can_mount_tmpfs(mount):
        pytest.skip("needs root and a tmpfs mount")
    try:
        proc = run_python(f"""
            import time
            import numpy as np
            import mmarray
            path = {str(mount / "sparse.bin")!r}
            with open(path, "wb") as f:
                f.truncate(8 << 20)          # 8 MiB of holes on a 1 MiB filesystem
            m = mmarray.open(path, dtype="u1", mode="r+")
            try:
                m.array[:] = 7               # runs out of space part of the way
                time.sleep(0.5)
                print("no error")
            except mmarray.MappedFileError as exc:
                print("raised", exc.range[0] > 0)
            assert m.faulted
            try:
                m.close()
            except mmarray.MappedFileError:
                pass
            data = np.fromfile(path, dtype="u1")
            written = int((data == 7).sum())
            assert set(np.unique(data)) <= {{0, 7}} and 0 < written < data.size, written
            print("ok")
        """, timeout=120)
        assert_clean_exit(proc)
        assert proc.stdout.split()[:2] == ["raised", "True"] and proc.stdout.split()[-1] == "ok"
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# -- found by review ---------------------------------------------------------------------------

def test_close_right_after_a_faulting_write_raises_instead_of_hanging(tmp_path):
    """close() -> error() -> dispatch() raised the exception into the calling thread while it
    held the guard's lock, and the exception's __init__ took the same lock: deadlock."""
    proc = run_case(tmp_path, """
        for attempt in range(5):
            try:
                with fresh() as m:
                    truncate_elsewhere()
                    m.array[-1] = 1.0
                raise SystemExit("close() did not raise")
            except mmarray.MappedFileError:
                pass
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_weakref_callback_of_a_faulted_mapping_cannot_resurrect_it(tmp_path):
    """The reader thread took a reference to a Region whose weakref callbacks were running
    (reference count 0): freed twice, SIGSEGV."""
    proc = run_case(tmp_path, """
        import weakref
        for attempt in range(5):
            m = fresh(mode="r")
            weakref.finalize(m, time.sleep, 0.1)   # releases the GIL inside deallocation
            truncate_elsewhere()
            try:
                x = m.array[-1]
                del m
                settle()
            except mmarray.MappedFileError:
                pass
        print("ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_guard_toggled_off_and_on_quickly_is_installed(tmp_path):
    proc = run_case(tmp_path, """
        fresh(mode="r").close()
        mmarray.set_fault_guard(False)
        mmarray.set_fault_guard(True)
        m = fresh(mode="r")
        truncate_elsewhere()
        try:
            float(m.array.sum()); settle()
        except mmarray.MappedFileError:
            print("raised")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["raised"]


def test_a_process_that_ignores_sigbus_still_ignores_a_sent_one(tmp_path):
    proc = run_case(tmp_path, """
        import signal
        signal.signal(signal.SIGBUS, signal.SIG_IGN)
        m = fresh(mode="r")          # the guard goes in front of SIG_IGN
        os.kill(os.getpid(), signal.SIGBUS)
        time.sleep(0.2)
        print("survived")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["survived"]


def test_faults_past_the_process_mapping_limit_zero_the_whole_view(tmp_path):
    """Each zero page splits the view's mapping; at vm.max_map_count the page's mmap failed
    with ENOMEM and the handler let the process die."""
    proc = run_case(tmp_path, """
        path = PATH + ".big"
        with open(path, "wb") as f:
            f.truncate(1 << 30)
        with mmarray.open(path, dtype="f8", mode="r+") as w:
            w.array[1::1024] = 1.0          # the second half of every other page... kept
        limit = int(open("/proc/sys/vm/max_map_count").read())
        m = mmarray.open(path, dtype="f8", mode="r")
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({path!r}, 4096)"],
                       check=True)
        a = m.array
        pages = min(a.size // 512, limit + 1000)   # every other page: one split each
        try:
            float(a[:pages * 1024:1024].sum()); settle()
        except mmarray.MappedFileError:
            pass
        assert m.faulted and float(a[:pages * 1024:1024].sum()) == 0.0
        print("ok", pages > limit // 2)
    """, timeout=180)
    assert_clean_exit(proc)
    assert proc.stdout.split()[0] == "ok"


def test_whole_view_fallback_leaves_no_gap_for_a_reader_of_a_valid_page(tmp_path):
    """At vm.max_map_count the handler zeroed the whole view by munmap then mmap: another
    thread reading a valid page of the view in between got SIGSEGV (/tmp/a6/t_maplimit.py).
    """
    proc = run_case(tmp_path, """
        from numpy.lib.stride_tricks import as_strided
        path = PATH + ".big"
        with open(path, "wb") as f:
            f.truncate(1 << 30)
        with mmarray.open(path, dtype="f8", mode="r+") as w:
            w.array[0] = 1.0
        limit = int(open("/proc/sys/vm/max_map_count").read())
        m = mmarray.open(path, dtype="f8", mode="r")
        os.truncate(path, 4096)
        a = m.array
        stop = False
        def spin():   # reads the (valid) first page over and over, without the GIL
            one = as_strided(a[:1], shape=(20_000_000,), strides=(0,))
            while not stop:
                try:
                    one.sum()
                except mmarray.MappedFileError:
                    pass
        t = threading.Thread(target=spin); t.start()
        time.sleep(0.2)
        pages = min(a.size // 512, limit + 1000)
        try:
            float(a[:pages * 1024:1024].sum()); settle()
        except mmarray.MappedFileError:
            pass
        stop = True; t.join()
        print("ok", m.faulted)
    """, timeout=180)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok", "True"]


def test_a_foreign_fault_after_faulthandler_disable_dies_instead_of_looping(tmp_path):
    """The guard chained a numpy.memmap SIGBUS to a disabled faulthandler's handler, which
    returns without fixing anything: the access faulted for ever (/tmp/a6/t_fh2.py)."""
    proc = run_case(tmp_path, """
        import faulthandler
        m1 = fresh(mode="r")          # guard installed
        faulthandler.enable()         # in front; its previous: the guard
        time.sleep(0.2)
        m2 = fresh(mode="r")          # the guard back in front, its previous: faulthandler
        faulthandler.disable()        # puts back its own previous: the guard
        q = PATH + ".np"
        with open(q, "wb") as f:
            f.truncate(1 << 20)
        npm = np.memmap(q, dtype="u1", mode="r")
        os.truncate(q, 0)
        print(int(npm[4096 * 10]))
        print("survived")
    """, timeout=60)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert "survived" not in proc.stdout


@pytest.mark.parametrize("disposition", ["handler", "SIG_IGN"])
def test_a_sent_sigbus_goes_on_and_the_guard_stays(tmp_path, disposition):
    """One os.kill(pid, SIGBUS) reinstalled the previous disposition: the guard was gone and
    the next fault in a mapping hung or killed (/tmp/a6/t_sig.py before_kill)."""
    install = ("signal.signal(signal.SIGBUS, lambda s, f: got.append(s))"
               if disposition == "handler" else "signal.signal(signal.SIGBUS, signal.SIG_IGN)")
    proc = run_case(tmp_path, f"""
        import signal
        got = []
        {install}
        m = fresh(mode="r")
        os.kill(os.getpid(), signal.SIGBUS)
        time.sleep(0.2)
        print("handler saw", got)
        truncate_elsewhere()
        try:
            float(m.array.sum()); settle()
            print("no exception")
        except mmarray.MappedFileError:
            print("raised")
    """, timeout=60)
    assert_clean_exit(proc)
    seen = "[7]" if disposition == "handler" else "[]"
    assert proc.stdout.splitlines() == [f"handler saw {seen}", "raised"]


def test_a_sent_sigbus_with_the_default_disposition_kills(tmp_path):
    proc = run_case(tmp_path, """
        import signal
        m = fresh(mode="r")
        os.kill(os.getpid(), signal.SIGBUS)
        time.sleep(5)
        print("survived")
    """, timeout=60)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert "survived" not in proc.stdout


def test_faulthandler_enabled_after_the_guard_prints_once_for_a_sent_sigbus(tmp_path):
    proc = run_case(tmp_path, """
        import faulthandler, signal
        first = fresh(mode="r")
        faulthandler.enable()
        time.sleep(0.2)
        m = fresh(mode="r")           # the guard in front of faulthandler, behind it again
        os.kill(os.getpid(), signal.SIGBUS)
        time.sleep(5)
        print("survived")
    """, timeout=60)
    assert proc.returncode == -signal.SIGBUS, (proc.returncode, proc.stderr)
    assert proc.stderr.count("Fatal Python error: Bus error") == 1, proc.stderr
    assert "survived" not in proc.stdout


@pytest.mark.parametrize("kind", ["raw", "npy"])
def test_resize_of_a_faulted_mapping_is_refused(tmp_path, kind):
    """resize() after a fault grew the anonymous memory the guard put there, reset `faulted`,
    and later writes were lost without an error (/tmp/a6/t_resize.py)."""
    proc = run_case(tmp_path, f"""
        path = PATH + ".{kind}"
        if {kind!r} == "npy":
            np.save(path, np.ones(4 * 512))
            m = mmarray.load(path, mode="r+")
        else:
            with open(path, "wb") as f:
                f.truncate(4 * 4096)
            m = mmarray.open(path, dtype="f8", mode="r+")
        subprocess.run([sys.executable, "-c", f"import os; os.truncate({{path!r}}, 0)"],
                       check=True)
        try:
            float(m.array.sum()); settle()
        except mmarray.MappedFileError:
            pass
        try:
            m.resize(2 * 4 * 512)
            print("resized")
        except mmarray.MappedFileError as e:
            print("refused", e.filename == path, "open the file again" in str(e))
        print(m.faulted, os.path.getsize(path))
        try:
            m.close()
        except mmarray.MappedFileError:
            print("close raised")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines() == ["refused True True", "True 0", "close raised"]


def test_engine_resize_carries_the_fault_count_over(tmp_path):
    proc = run_case(tmp_path, """
        from mmarray import _engine
        path = PATH + ".raw"
        with open(path, "wb") as f:
            f.truncate(4 * 4096)
        m = mmarray.open(path, dtype="f8", mode="r+")
        os.truncate(path, 2 * 4096)
        try:
            float(m.array[-1]); settle()
        except mmarray.MappedFileError:
            pass
        before = m._faults()
        fd = os.open(path, os.O_RDWR)
        _engine.Region._resize(m, fd, 2 * 4096, (1024,), False)   # past the Python check
        print(before > 0, m._faults() >= before, m.faulted)
        a = m.array                                   # an export: the next resize retires
        fd2 = os.open(path, os.O_RDWR)
        _engine.Region._resize(m, fd2, 4096, (512,), False)
        print(m.faulted)
        del a
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.splitlines() == ["True True True", "True"]


def test_a_thread_reusing_the_ident_of_one_that_faulted_is_not_told(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh(mode="r")
        truncate_elsewhere()
        def reader():
            try:
                float(m.array[-1])
            except mmarray.MappedFileError:
                pass
        got = []
        def sleeper():
            try:
                time.sleep(1.0)
            except mmarray.MappedFileError:
                got.append("wrong thread")
        for _ in range(5):
            a = threading.Thread(target=reader); a.start(); a.join()
            b = threading.Thread(target=sleeper); b.start(); b.join()
            m = fresh(mode="r"); truncate_elsewhere()
        print(got or "ok")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_forked_children_do_not_take_the_parents_fault_wakeups(tmp_path):
    proc = run_case(tmp_path, """
        fresh(mode="r").close()
        children = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            children.append(pid)
        raised = 0
        for _ in range(10):
            m = fresh(mode="r")
            truncate_elsewhere()
            try:
                float(m.array.sum()); settle()
            except mmarray.MappedFileError:
                raised += 1
            m.close()
        for pid in children:
            os.waitpid(pid, 0)
        print(raised)
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["10"]


def test_a_fault_in_a_thread_python_does_not_run_raises_in_the_main_thread(tmp_path):
    """Also a stall, fixed: the dispatcher waited 100 ms under its lock for every record of a
    BLAS worker (one per run of faults: hundreds over a matrix), and the main thread's
    exception, which takes that lock, came about 50 s after the product had returned."""
    proc = run_case(tmp_path, """
        m = fresh(mode="r")
        truncate_elsewhere()
        a = m.array[: 2048 * 2048].reshape(2048, 2048)
        t0 = time.monotonic()
        try:
            c = a @ np.ones((2048, 8))      # BLAS may run it in threads of its own
            settle()
            print("no error")
        except mmarray.MappedFileError:
            print("raised", threading.current_thread() is threading.main_thread())
        print("slow" if time.monotonic() - t0 > 15 else "in time")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["raised", "True", "in", "time"]


def test_mapped_file_error_pickles_with_what_it_says():
    import copy
    import pickle

    import mmarray

    error = mmarray.MappedFileError(5, "bytes 4096 to 8192 ...", "/data/x.f8", 4096, 8192)
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error)):
        assert type(again) is mmarray.MappedFileError
        assert (again.errno, again.filename, again.range) == (5, "/data/x.f8", (4096, 8192))


def test_faults_in_two_files_before_the_exception_report_the_first_and_name_the_other(
        tmp_path):
    """helper-55: the range took its first byte from every file's faults (file A, "bytes 4096
    to 67108864": 4096 was file B's), and file B went unreported."""
    proc = run_case(tmp_path, """
        other = PATH + ".b"
        with open(other, "wb") as f:
            f.write(b"\\1" * (1 << 20))
        m, m2 = fresh(mode="r"), mmarray.open(other, mode="r")
        a, b = m.array, m2.array
        truncate_elsewhere()
        os.truncate(other, 4096)
        try:
            x = float(a[-1]) + float(b[4096])   # both fault before the exception is made
            settle()
            print("returned")
        except mmarray.MappedFileError as exc:
            print(exc.filename == PATH, exc.range == (SIZE - 4096, SIZE))
            print(f"{other!r} (bytes 4096 to 8192) too" in str(exc), m2.faulted)
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["True", "True", "True", "True"], proc.stdout


def test_fault_report_of_many_files_names_a_few_and_counts_the_rest():
    from mmarray import _guard

    faults = [("a", 8192, 12288), ("b", 0, 4096), ("a", 4096, 8192), ("b", 8192, 12288),
              *((f"f{i}", 0, 4096) for i in range(5))]
    assert _guard._merge(faults) == ("a", 4096, 12288)
    assert _guard._elsewhere(faults) == (
        "; this thread faulted in 'b' (bytes 0 to 12288), 'f0' (bytes 0 to 4096), 'f1' "
        "(bytes 0 to 4096), 'f2' (bytes 0 to 4096) too, and in 2 more file(s)")
    assert _guard._elsewhere(faults[:1] + faults[2:3]) == ""


# -- views kept for arrays made before a resize or a rebase (found by a fuzzing review) -------

def test_an_array_made_before_a_rebase_faults_into_an_exception_not_sigbus(tmp_path):
    # NpyMapping.resize rewrites a .npy whose header has no room into a copy renamed over
    # it; an array made before keeps the old file's view. Its guard slot was removed then,
    # so a fault there (another holder of the old file truncates it) killed the process.
    path = tmp_path / "t.npy"
    proc = run_python(f"""
        import time
        import numpy as np
        import mmarray
        PATH = {str(path)!r}
        hdr = b"{{'descr': '<f8', 'fortran_order': False, 'shape': (1024,), }}\\n"  # no room
        with open(PATH, "wb") as fh:
            fh.write(b"\\x93NUMPY\\x01\\x00" + len(hdr).to_bytes(2, "little") + hdr
                     + np.ones(1024).tobytes())
        old = open(PATH, "r+b")          # someone still has the original file open
        m = mmarray.load(PATH, mode="r+")
        a = m.array                       # made before the resize: the old file's view
        m.resize(10240)                   # no room in the header: a copy is renamed over
        old.truncate(0)                   # the old file is cut under the array
        try:
            float(a.sum())
            time.sleep(0.5)
            print("returned")
        except mmarray.MappedFileError:
            print("raised")
        print("faulted", m.faulted)
        del a
        try:
            m.close()
            print("closed quietly")
        except mmarray.MappedFileError:
            print("close raised")
        print(float(np.load(PATH).sum()))  # the new file: the data, grown with zeros
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split("\n")[:-1] == ["raised", "faulted True", "close raised",
                                            "1024.0"], proc.stdout


def test_faults_in_a_view_kept_after_a_resize_count_for_the_mapping(tmp_path):
    proc = run_case(tmp_path, """
        m = fresh()
        a = m.array                         # made before the resize: the old view's
        m.resize(((SIZE // 8) * 2,))        # grown: a new view; `a` keeps the old one
        truncate_elsewhere()
        try:
            float(a.sum()); settle()
        except mmarray.MappedFileError:
            pass
        print("faulted", m.faulted)
        del a                               # the kept view goes: its count stays
        print("faulted", m.faulted)
        try:
            m.close()
            print("closed quietly")
        except mmarray.MappedFileError:
            print("close raised")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split("\n")[:-1] == ["faulted True", "faulted True", "close raised"], \
        proc.stdout


def test_a_fault_in_a_view_kept_after_a_rebase_is_reported_at_the_old_files_offsets(tmp_path):
    # The kept view maps the old file, whose data starts earlier than the new file's (the
    # rewrite gave the header room): its fault records were made with the new file's data
    # offset, so the file offset of the faulting byte came out shifted by the difference
    # (helper-50; the exception's range, rounded to pages, hides a shift below a page).
    path = tmp_path / "t.npy"
    proc = run_python(f"""
        import numpy as np
        import mmarray
        from mmarray import _engine
        import time
        PATH = {str(path)!r}
        seen = []
        pop = _engine.guard_pop
        def recording_pop():
            records = pop()
            seen.extend(offset for _token, _name, offset, _thread, _native in records)
            return records
        _engine.guard_pop = recording_pop     # the dispatcher looks it up at every round
        hdr = b"{{'descr': '<f8', 'fortran_order': False, 'shape': (4096,), }}\\n"  # no room
        with open(PATH, "wb") as fh:
            fh.write(b"\\x93NUMPY\\x01\\x00" + len(hdr).to_bytes(2, "little") + hdr
                     + np.ones(4096).tobytes())
        old_offset = 10 + len(hdr)
        old = open(PATH, "r+b")
        m = mmarray.load(PATH, mode="r+")
        a = m.array                           # on the old file's view
        m.resize(40960)                       # a copy with room renamed over the name
        print("moved", m.offset != old_offset)
        old.truncate(0)
        try:
            float(a.sum())
            time.sleep(0.5)       # the exception is delivered at the next chance: give it one
        except mmarray.MappedFileError:
            pass
        print("records", len(seen) > 0)
        # the sum's first read, at the old file's first data byte, faults first
        print("first", seen[:1] == [old_offset], seen[:4], old_offset, m.offset)
        print("inside", all(old_offset <= o < old_offset + 8 * 4096 for o in seen))
        del a
        try:
            m.close()
        except mmarray.MappedFileError:
            pass
    """, timeout=120)
    assert_clean_exit(proc)
    lines = proc.stdout.split("\n")
    assert lines[:2] == ["moved True", "records True"], proc.stdout
    assert lines[2].startswith("first True"), proc.stdout
    assert lines[3] == "inside True", proc.stdout
