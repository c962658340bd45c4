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
        m = mmarray.open({path!r}, dtype="u1", mode="w+", shape=4096)
        stop = False
        sys.setswitchinterval(1e-6)
        def reader():
            while not stop:
                a = m.array
                int(a[-1]) + int(a[0])
                del a
        t = threading.Thread(target=reader); t.start()
        for i in range(1500):
            m.resize(4096 if i % 2 else (1 << 22) + 4096 * (i % 7))
        stop = True; t.join()
        m.close(); print("ok")
    """, timeout=240)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout
