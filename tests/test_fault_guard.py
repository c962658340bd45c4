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


def test_guard_turned_back_on_guards_new_mappings(tmp_path):
    proc = run_case(tmp_path, """
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


def test_readers_racing_truncations_never_crash_or_hang(tmp_path):
    """4 threads read while another process truncates and regrows the file 200 times."""
    proc = run_case(tmp_path, """
        fresh().close()
        stop = threading.Event()
        raised, faulted = [0], [0]
        def reader():
            while True:
                try:
                    if stop.is_set():
                        settle()    # a last fault's exception arrives in here
                        return
                    try:
                        m = mmarray.open(PATH, dtype="f8", mode="r", shape=SIZE // 8)
                    except mmarray.MappedFileError:
                        raise
                    except (ValueError, OSError):
                        continue    # caught the file short: mapping it is refused
                    try:
                        float(m.array[::512].sum())   # one element per page
                    finally:
                        faulted[0] += m.faulted
                        m.close()
                except mmarray.MappedFileError:
                    raised[0] += 1
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
        print(faulted[0], raised[0])
    """, timeout=240)
    assert_clean_exit(proc)
    faulted, raised = map(int, proc.stdout.split())
    assert faulted > 0 and raised == faulted, (faulted, raised)  # each fault reported once


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
