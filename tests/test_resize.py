"""Mapping.resize (issue #12): a mapping takes a new shape, growing the file first."""
import os
import time

import numpy as np
import pytest

import mmarray
from helpers import assert_clean_exit, run_python


@pytest.fixture
def grid(tmp_path):
    m = mmarray.open(tmp_path / "g.f8", dtype="f8", mode="w+", shape=(4, 8))
    m.array[:] = np.arange(32).reshape(4, 8)
    yield m
    m.close()


def test_resize_larger_grows_the_file_and_keeps_the_data(grid):
    grid.resize((10, 8))
    assert grid.shape == (10, 8) and os.path.getsize(grid.filename) == 10 * 8 * 8
    assert grid.array[:4].tolist() == np.arange(32).reshape(4, 8).tolist()
    assert not grid.array[4:].any()
    grid.array[-1] = 7
    grid.flush()
    assert np.fromfile(grid.filename, "f8")[-8:].tolist() == [7] * 8


def test_resize_smaller_maps_less_and_leaves_the_file(grid):
    grid.resize((2, 8))
    assert grid.array.shape == (2, 8) and os.path.getsize(grid.filename) == 4 * 8 * 8


def test_resize_smaller_with_truncate_cuts_the_file(grid):
    grid.resize(3, truncate=True)
    assert grid.shape == (3,) and os.path.getsize(grid.filename) == 24
    assert grid.array.tolist() == [0, 1, 2]


def test_arrays_made_before_a_resize_stay_valid_on_their_region(grid):
    before = grid.array
    view = before[1:3]
    grid.resize((1000, 8))
    assert before.shape == (4, 8) and grid.array.shape == (1000, 8)
    assert grid.exports == 1  # the old array (its view shares its export): its region kept
    before[0, 0] = 99          # the same file: seen through the new view
    assert grid.array[0, 0] == 99 and view[0, 0] == 8
    grid.resize((2, 8))        # again, with the old arrays still alive
    del before, view
    assert grid.exports == 0
    grid.close(strict=True)


def test_truncate_is_refused_while_arrays_over_the_cut_part_live(grid):
    a = grid.array
    before = open(grid.filename, "rb").read()
    with pytest.raises(BufferError, match="alive"):
        grid.resize((1, 8), truncate=True)
    assert grid.shape == (4, 8) and open(grid.filename, "rb").read() == before
    del a
    grid.resize((1, 8), truncate=True)
    assert os.path.getsize(grid.filename) == 64


def test_truncate_is_refused_while_another_mapping_of_the_file_lives(grid):
    with mmarray.open(grid.filename, dtype="f8", mode="r") as other:
        with pytest.raises(BufferError, match="other mappings"):
            grid.resize((1, 8), truncate=True)
        assert other.array.sum() == sum(range(32))


def test_truncate_refuses_to_drop_data_after_the_mapping(tmp_path):
    path = tmp_path / "tail.bin"
    path.write_bytes(bytes(range(100)))
    with mmarray.open(path, mode="r+", shape=50) as m:
        with pytest.raises(ValueError, match="after the end of this mapping"):
            m.resize(10, truncate=True)
        assert m.shape == (50,)
    assert path.read_bytes() == bytes(range(100))


@pytest.mark.parametrize("mode", ["r", "c"])
def test_read_only_and_copy_on_write_mappings_refuse(grid, mode):
    with mmarray.open(grid.filename, dtype="f8", mode=mode, shape=(4, 8)) as m:
        with pytest.raises(ValueError, match="writable"):
            m.resize((8, 8))
    assert os.path.getsize(grid.filename) == 256


def test_closed_and_zero_size_resizes_are_refused(grid):
    with pytest.raises(ValueError, match="zero bytes"):
        grid.resize((0, 8))
    with pytest.raises(ValueError, match="negative"):
        grid.resize((-1, 8))
    grid.close()
    with pytest.raises(ValueError, match="closed"):
        grid.resize((8, 8))


def test_a_file_object_mapping_without_a_name_refuses(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"\0" * 64)
    with open(path, "r+b") as f, mmarray.open(f, mode="r+") as m:
        with pytest.raises(ValueError, match="file object"):
            m.resize(128)


def test_a_file_replaced_at_the_name_is_not_resized_into(grid, tmp_path):
    other = tmp_path / "other.f8"
    other.write_bytes(b"\0" * 8)
    os.replace(other, grid.filename)
    with pytest.raises(ValueError, match="no longer the file"):
        grid.resize((100, 8))
    assert os.path.getsize(grid.filename) == 8
    assert grid.array[1, 1] == 9  # still the old file's data


def test_resize_while_a_prefetch_runs_is_refused_or_waits_for_nothing_to_break(tmp_path):
    m = mmarray.open(tmp_path / "p.f8", dtype="f8", mode="w+", shape=1 << 22)
    p = m.prefetch()
    try:
        m.resize(1 << 23)
    except BufferError:
        pass
    p.wait()
    m.resize(1 << 23)
    assert m.array.shape == (1 << 23,)
    m.close()


def test_resize_of_a_large_mapping_without_exports_does_not_depend_on_its_size(tmp_path):
    """mremap moves the view: growing 8 GiB costs what growing 64 MiB does (sparse files)."""
    times = {}
    for size in (64 << 20, 8 << 30):
        path = tmp_path / f"s{size}.bin"
        with open(path, "wb") as f:
            f.truncate(2 * size)     # room to grow without allocating
        m = mmarray.open(path, mode="r+", shape=size)
        start = time.perf_counter()
        m.resize(2 * size)
        times[size] = time.perf_counter() - start
        assert m.shape == (2 * size,)
        m.close()
        os.remove(path)
    assert times[8 << 30] < 0.5, times  # a copy or a page walk of 8 GiB would take seconds


def test_resize_then_fault_guard_still_guards_the_moved_view(tmp_path):
    proc = run_python(f"""
        import os, subprocess, sys, time
        import mmarray
        path = {str(tmp_path / "guarded.f8")!r}
        m = mmarray.open(path, dtype="f8", mode="w+", shape=1 << 10)
        m.resize(1 << 20)
        os.truncate(path, 4096)
        try:
            float(m.array.sum()); time.sleep(0.5)
        except mmarray.MappedFileError:
            print("raised")
    """, timeout=60)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["raised"]


# -- .npy files grow in place ---------------------------------------------------------------

def test_npy_grows_along_its_first_axis_and_the_header_follows(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.arange(12, dtype="i4").reshape(3, 4))
    size = os.path.getsize(path)
    with mmarray.load(path, mode="r+") as m:
        m.resize(5)
        assert m.shape == (5, 4)
        m.array[3:] = 9
        m.flush()
    got = np.load(path)
    assert got.shape == (5, 4) and got[:3].tolist() == np.arange(12).reshape(3, 4).tolist()
    assert (got[3:] == 9).all() and os.path.getsize(path) == size + 2 * 16


def test_npy_in_fortran_order_grows_along_its_last_axis(tmp_path):
    path = tmp_path / "f.npy"
    np.save(path, np.asfortranarray(np.arange(6.0).reshape(2, 3)))
    with mmarray.load(path, mode="r+") as m:
        m.resize((2, 5))
        m.array[:, 3:] = -1
    got = np.load(path)
    assert got.shape == (2, 5) and got[:, :3].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_npy_shrinks_header_first_and_truncates_on_request(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, np.arange(100, dtype="f8"))
    with mmarray.load(path, mode="r+") as m:
        m.resize(10, truncate=True)
    assert np.load(path).tolist() == list(range(10))
    assert os.path.getsize(path) == 128 + 80


def test_create_npy_mappings_grow_too(tmp_path):
    path = tmp_path / "c.npy"
    with mmarray.create_npy(path, "u2", (2, 2)) as m:
        m.resize((6, 2))
        m.array[:] = 3
    assert np.load(path).shape == (6, 2) and (np.load(path) == 3).all()


def test_npy_resize_refuses_other_axes_and_leaves_the_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((3, 4)))
    before = path.read_bytes()
    with mmarray.load(path, mode="r+") as m:
        with pytest.raises(ValueError, match="grows along axis 0 only"):
            m.resize((3, 5))
    assert path.read_bytes() == before


def test_npy_header_without_room_is_rewritten_once_with_room(tmp_path):
    path = tmp_path / "tight.npy"
    text = b"{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text
                     + np.arange(2, dtype="i8").tobytes())
    inode = path.stat().st_ino
    with mmarray.load(path, mode="r+") as m:
        old = m.array            # keeps the old file's data
        m.array[1] = 5           # reaches the file before the rewrite copies it
        m.resize(10**6)
        assert m.shape == (10**6,) and m.array[:2].tolist() == [0, 5]
        m.array[-1] = 7
        old[0] = -1              # the old file: not the one at the path any more
        assert m.array[0] == 0
        del old
    assert path.stat().st_ino != inode
    got = np.load(path)
    assert got.shape == (10**6,) and got[:2].tolist() == [0, 5] and got[-1] == 7


def test_npz_members_and_row_mappings_do_not_resize(tmp_path):
    npz = tmp_path / "a.npz"
    np.savez(npz, x=np.zeros(4))
    before = npz.read_bytes()
    with mmarray.load(npz, mode="r+") as archive:
        with pytest.raises(ValueError, match="member of a .npz"):
            archive["x"].resize(8)
    assert npz.read_bytes() == before
    npy = tmp_path / "r.npy"
    np.save(npy, np.zeros((10, 2)))
    with mmarray.load(npy, mode="r+", rows=(2, 4)) as part:
        with pytest.raises(ValueError, match="some rows"):
            part.resize(5)
