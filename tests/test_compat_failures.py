"""open_memmap(mode='w+') that fails leaves the files as they were: an existing file is not
truncated or half rewritten, and a file the call would have created does not exist after it
(audit f7). The new file is written under a temporary name and renamed over the target once
it is complete and mapped."""
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest

import mmarray

OLD = np.arange(1000.0)


def _listing(directory):
    return sorted(os.listdir(directory))


@pytest.fixture
def small_tmpfs():
    """A 2 MiB tmpfs (root only; skipped when it cannot be mounted)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount(8) here")
    where = tempfile.mkdtemp(prefix="mmarray-compat-tmpfs-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", where],
                      capture_output=True).returncode:
        os.rmdir(where)
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield where
    finally:
        if subprocess.run(["umount", where], capture_output=True).returncode:
            subprocess.run(["umount", "-l", where], capture_output=True)
        os.rmdir(where)


def test_full_disk_leaves_an_existing_file_as_it_was(small_tmpfs):
    path = os.path.join(small_tmpfs, "old.npy")
    np.save(path, OLD)
    before = open(path, "rb").read()
    with pytest.raises(OSError) as info:
        mmarray.open_memmap(path, mode="w+", dtype="u1", shape=(10 << 20,))
    assert not isinstance(info.value, ValueError)
    assert "old.npy" in str(info.value)  # the error names the target, not the temporary
    assert open(path, "rb").read() == before  # was a 128-byte broken .npy
    np.testing.assert_array_equal(np.load(path), OLD)
    assert _listing(small_tmpfs) == ["old.npy"]  # no temporary left behind


def test_full_disk_creates_no_file(small_tmpfs):
    path = os.path.join(small_tmpfs, "new.npy")
    with pytest.raises(OSError, match="new.npy"):
        mmarray.open_memmap(path, mode="w+", dtype="u1", shape=(10 << 20,))
    assert _listing(small_tmpfs) == []  # was a new.npy holding only a header


def test_it_still_fits_when_the_old_file_is_the_room_it_needs(small_tmpfs):
    """The old file stays until the new one is complete: both must fit at once now. A file
    that fits beside the old one replaces it."""
    path = os.path.join(small_tmpfs, "a.npy")
    np.save(path, OLD)
    with mmarray.open_memmap(path, mode="w+", dtype="u1", shape=(1 << 19,)) as a:
        a[:] = 7
        a.flush()
    assert _listing(small_tmpfs) == ["a.npy"]
    got = np.load(path)
    assert got.shape == (1 << 19,) and got.dtype == np.uint8 and (got == 7).all()


def test_a_bad_mode_leaves_the_file_as_it_was(tmp_path):
    """numpy's open_memmap writes the header, then memmap refuses mode 'w': the file was
    already truncated. Now nothing is touched."""
    path = tmp_path / "a.npy"
    np.save(path, OLD)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'w'"):
        mmarray.open_memmap(path, mode="w", dtype="f8", shape=(3,))
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["a.npy"]


def test_a_bad_shape_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, OLD)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        mmarray.open_memmap(path, mode="w+", dtype="f8", shape=(-3,))
    assert path.read_bytes() == before
    assert _listing(tmp_path) == ["a.npy"]
    with pytest.raises(ValueError):
        mmarray.open_memmap(tmp_path / "new.npy", mode="w+", dtype="f8", shape=(-3,))
    assert _listing(tmp_path) == ["a.npy"]


@pytest.mark.skipif(os.name == "nt", reason="POSIX permission bits and symbolic links")
def test_replacing_keeps_permissions_and_follows_a_link(tmp_path):
    target = tmp_path / "data.npy"
    np.save(target, OLD)
    os.chmod(target, 0o640)
    link = tmp_path / "link.npy"
    link.symlink_to(target)
    with mmarray.open_memmap(link, mode="w+", dtype="i2", shape=(2, 3)) as a:
        a[:] = [[1, 2, 3], [4, 5, 6]]
        a.flush()
        assert a.filename == link.resolve()  # numpy's resolved Path, not the temporary
        assert a.mode == "r+"
    assert link.is_symlink()
    assert np.load(target).tolist() == [[1, 2, 3], [4, 5, 6]]
    assert os.stat(target).st_mode & 0o777 == 0o640
    assert _listing(tmp_path) == ["data.npy", "link.npy"]


def test_the_mapping_names_the_target(tmp_path):
    path = str(tmp_path / "named.npy")
    with mmarray.open_memmap(path, mode="w+", dtype="f4", shape=(4,)) as a:
        assert a.filename == path
        assert mmarray.mapping_of(a).filename == path
    assert _listing(tmp_path) == ["named.npy"]
