"""Helpers shared by mmarray's tests (tests/ is on sys.path through pytest's pythonpath)."""
import os
import subprocess
import sys
import textwrap

import pytest


def run_python(code, timeout=300, env=None):
    """Run ``code`` in a fresh interpreter; return the CompletedProcess (crash = non-zero rc)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def assert_clean_exit(proc):
    """A subprocess that crashed (SIGSEGV, SIGBUS: negative return code) or failed."""
    assert proc.returncode == 0, (
        f"subprocess exited with {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")


def mapped_regions(path):
    """The /proc/self/maps lines that map ``path`` (Linux only)."""
    path = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return [line for line in f if line.rstrip("\n").endswith(" " + path)]


def mapped_bytes(path):
    """Total bytes of this process's mappings of ``path``, from /proc/self/maps."""
    total = 0
    for line in mapped_regions(path):
        lo, hi = line.split()[0].split("-")
        total += int(hi, 16) - int(lo, 16)
    return total


needs_proc_maps = pytest.mark.skipif(not os.path.exists("/proc/self/maps"),
                                     reason="needs Linux /proc/self/maps")


def mapped_smaps(path, field):
    """Sum of one /proc/self/smaps field (kB, returned in bytes) over this process's mappings
    of ``path``: "Rss" for pages with page-table entries, "Anonymous" for private copies."""
    path = os.path.realpath(path)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):
                inside = line.rstrip("\n").endswith(" " + path)
            elif inside and first == field + ":":
                total += int(line.split()[1]) * 1024
    return total


def mapped_rss(path):
    """Resident bytes (pages with page-table entries) of this process's mappings of ``path``,
    from /proc/self/smaps: what page faults or populating put in, what MADV_DONTNEED takes out."""
    return mapped_smaps(path, "Rss")


def write_npy_without_room(path, array):
    """Write ``array`` (C order) as a version 1.0 .npy whose header has no padding: a larger
    shape does not fit in it, so growing the file rewrites it (NpyMapping.resize)."""
    import numpy as np
    from numpy.lib import format as npformat
    array = np.ascontiguousarray(array)
    text = (f"{{'descr': {npformat.dtype_to_descr(array.dtype)!r}, 'fortran_order': False, "
            f"'shape': {array.shape!r}, }}\n").encode("latin1")
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + array.tobytes())
