"""Region._rebase with a ``commit``: the step that puts a rewritten copy at the file's name
(NpyMapping.resize's rename) runs inside the move, so that no bytecode runs between the
rename and the move. One test per way the commit can end: it raises, another thread closes
the mapping while it runs (a rename releases the GIL), it returns. Those that could unmap a
view twice run in a subprocess with a timeout and check the exit code."""
import os
import shutil

import numpy as np
import pytest

import mmarray
from mmarray import _engine
from helpers import assert_clean_exit, run_python, write_npy_without_room


def _npy_and_copy(tmp_path):
    path, copy = tmp_path / "a.npy", tmp_path / "copy.npy"
    np.save(path, np.arange(12, dtype="f8").reshape(4, 3))
    shutil.copyfile(path, copy)
    return path, copy


def _identity(path):
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_a_rebase_whose_commit_raises_leaves_the_mapping_on_its_file(tmp_path):
    path, copy = _npy_and_copy(tmp_path)
    m = mmarray.load(path, mode="r+")
    fd = os.open(copy, os.O_RDWR)

    def refuse():
        raise OSError(13, "refused", str(copy))

    try:
        with pytest.raises(OSError, match="refused"):
            m._rebase(fd, m.offset, m.shape, refuse)
        assert m._identity() == _identity(path)
        assert _engine.live_views(*_identity(copy)) == 0      # the new view is unmapped
        assert _engine.live_views(*_identity(path)) == 1      # the counts as they were
        m.array[0, 0] = 42
        m.flush()
        assert np.load(path)[0, 0] == 42 and np.load(copy)[0, 0] == 0
    finally:
        os.close(fd)
        m.close()
    assert _engine.live_views(*_identity(path)) == 0


def test_a_rebase_whose_commit_returns_moves_after_it_ran(tmp_path):
    path, copy = _npy_and_copy(tmp_path)
    m = mmarray.load(path, mode="r+")
    a = m.array                                  # made before: keeps the old view
    old_identity = _identity(path)
    fd = os.open(copy, os.O_RDWR)
    seen = []
    try:
        m._rebase(fd, m.offset, m.shape, lambda: seen.append(m._identity()))
        assert seen == [old_identity]            # not moved yet while the commit ran
        assert m._identity() == _identity(copy)
        assert _engine.live_views(*_identity(copy)) == 1
        assert _engine.live_views(*old_identity) == 1          # the view kept for `a`
        m.array[0, 0] = 7
        a[0, 1] = 8
        m.flush()
        assert np.load(copy)[0, 0] == 7 and np.load(path)[0, 1] == 8
        del a
        assert _engine.live_views(*old_identity) == 0
    finally:
        os.close(fd)
        m.close()


@pytest.mark.parametrize("with_array", [False, True], ids=["no array", "an array alive"])
def test_a_mapping_closed_while_its_rebase_commits_is_left_closed_and_unmapped_once(
        tmp_path, with_array):
    # The rename releases the GIL: another thread may close the mapping meanwhile. The move
    # must then not touch the old view (unmapped by the close, or kept for its arrays).
    path, copy = _npy_and_copy(tmp_path)
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        from mmarray import _engine
        m = mmarray.load({str(path)!r}, mode="r+")
        a = m.array if {with_array!r} else None
        fd = os.open({str(copy)!r}, os.O_RDWR)
        try:
            m._rebase(fd, m.offset, m.shape, m.close)
        except ValueError as exc:
            assert "closed" in str(exc), exc
        else:
            raise SystemExit("the move went on after the close")
        st = os.stat({str(copy)!r})
        assert _engine.live_views(st.st_dev, st.st_ino) == 0
        if a is not None:
            a[0, 0] = 5                           # still mapped for it
            del a
        st = os.stat({str(path)!r})
        assert _engine.live_views(st.st_dev, st.st_ino) == 0
        os.close(fd)
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


def test_an_interrupt_after_the_rename_leaves_the_mapping_on_the_file_at_the_name(
        tmp_path, monkeypatch):
    # helper-51's reproducer: a KeyboardInterrupt landing after the copy with room was
    # renamed over the name (here in the directory's fsync) left the mapping on the
    # unlinked old file: the write below went there and np.load saw 0.
    from mmarray import _npyformat
    path = tmp_path / "r.npy"
    write_npy_without_room(path, np.zeros((9, 3), "f4"))
    fsync_directory = _npyformat.fsync_directory

    def then_interrupt(p):
        fsync_directory(p)
        raise KeyboardInterrupt

    m = mmarray.load(path, mode="r+")
    try:
        monkeypatch.setattr(_npyformat, "fsync_directory", then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            m.resize((10, 3))
        monkeypatch.undo()
        assert m._identity() == _identity(path)
        m.array[0, 0] = 3
        m.flush()
        assert np.load(path)[0, 0] == 3
        m.resize((10, 3))                        # not refused
        m.array[9] = 4
        m.flush()
        assert np.load(path).shape == (10, 3) and np.load(path)[9].tolist() == [4, 4, 4]
    finally:
        m.close()
    assert [p.name for p in tmp_path.iterdir()] == ["r.npy"]


_FORK_PRELUDE = """
import os, threading
import numpy as np
import mmarray
from mmarray import _engine


def count(identity):
    return _engine.live_views(*identity)


def identity(p):
    st = os.stat(p)
    return st.st_dev, st.st_ino


def start(path, copy):
    # The mapping of `path`, the two files' identities and a descriptor of `copy`.
    return mmarray.load(path, mode="r+"), identity(path), identity(copy), \
        os.open(copy, os.O_RDWR)


def in_child(check):
    # Fork (from the calling thread); the child runs check() and exits 0 if it returns.
    pid = os.fork()
    if pid == 0:
        try:
            check()
        except BaseException as exc:
            print("child:", repr(exc), flush=True)
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, status


def from_another_thread(check):
    # As another thread forking while the rebasing thread is in its commit; what the thread
    # raised (the child's exit code checked) is raised here.
    failed = []

    def run():
        try:
            in_child(check)
        except BaseException as exc:
            failed.append(exc)
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if failed:
        raise failed[0]
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("renamed", [False, True], ids=["before the rename", "after it"])
def test_a_child_forked_by_another_thread_during_a_rebase_finishes_or_undoes_it(tmp_path,
                                                                               renamed):
    # The rename runs without the GIL: another thread may fork meanwhile, and the child has
    # no thread to finish the move. Left half done, its counts stayed one too high for both
    # files and 'w+' of the file was refused there for good (helper-52). Undone after the
    # rename, the child's writes went to the unlinked old file (helper-53). The child now
    # finishes the move if the name leads to the copy, and undoes it otherwise.
    path, copy = _npy_and_copy(tmp_path)
    proc = run_python(_FORK_PRELUDE + f"""
path, copy = {str(path)!r}, {str(copy)!r}
m, old, new, fd = start(path, copy)

def check():
    if {renamed!r}:     # finished: on the copy, now at the name
        assert m._identity() == new and count(new) == 1 and count(old) == 0, (
            count(new), count(old))
    else:               # undone: on the old file, still at the name
        assert m._identity() == old and count(new) == 0 and count(old) == 1, (
            count(new), count(old))
    m.array[0, 0] = 9
    m.flush()
    assert np.load(path)[0, 0] == 9
    m.close()
    assert count(new) == 0 and count(old) == 0
    mmarray.open(path, mode="w+", shape=8).close()     # not refused

def commit():
    if {renamed!r}:
        os.replace(copy, path)
    from_another_thread(check)
    if not {renamed!r}:
        os.replace(copy, path)

m._rebase(fd, m.offset, m.shape, commit, os.fsencode(path))
assert m._identity() == new and count(new) == 1 and count(old) == 0
m.close()
os.close(fd)
print("ok")
""", timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("then", ["return", "raise"])
def test_a_commit_that_forks_goes_on_in_the_child_as_in_the_parent(tmp_path, then):
    # A fork from the rebasing thread itself (a commit that forks): the child's rebase goes
    # on. The fork handler undid it as well, so the child then moved onto an unmapped view
    # (SIGSEGV) or undid it twice, unmapping whatever had been mapped there since and
    # letting 'w+' truncate the file under its mapping (helper-53).
    path, copy = _npy_and_copy(tmp_path)
    proc = run_python(_FORK_PRELUDE + f"""
path, copy = {str(path)!r}, {str(copy)!r}
m, old, new, fd = start(path, copy)
then = {then!r}

def commit():
    pid = os.fork()
    if pid == 0:       # the child goes on with the rebase, then checks below
        globals()["child"] = True
    else:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
    if then == "raise":
        raise OSError(5, "refused")

child = False
try:
    m._rebase(fd, m.offset, m.shape, commit, os.fsencode(path))
except OSError:
    assert then == "raise"
moved = then == "return"
assert m._identity() == (new if moved else old)
assert (count(new), count(old)) == ((1, 0) if moved else (0, 1)), (count(new), count(old))
other = mmarray.open(os.path.join(os.path.dirname(path), "c.bin"), mode="w+", shape=65536)
other.array[:] = 1
m.array[0, 0] = 9
assert other.array.sum() == 65536
if not moved:
    try:
        mmarray.open(path, mode="w+", shape=8)
    except ValueError as exc:
        assert "is mapped by 1 live mapping" in str(exc), exc
    else:
        raise SystemExit("'w+' truncated a file still mapped")
other.close()
m.close()
assert count(new) == 0 and count(old) == 0
os.close(fd)
if child:
    os._exit(0)
print("ok")
""", timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout


def test_a_resize_whose_mapping_is_closed_during_the_rename_makes_the_rename_durable(
        tmp_path):
    # Another thread closing the mapping while the copy is renamed over the name: the move
    # is undone and the resize raises, but the rename stands (the same data and shape), and
    # its directory entry was not synced (helper-52's review).
    path = tmp_path / "r.npy"
    write_npy_without_room(path, np.arange(27, dtype="f4").reshape(9, 3))
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        from mmarray import _engine, _npyformat
        path = {str(path)!r}
        m = mmarray.load(path, mode="r+")
        replace, synced = os.replace, []

        def replace_then_close(src, dst):   # as another thread closing meanwhile
            replace(src, dst)
            m.close()

        os.replace = replace_then_close
        _npyformat.fsync_directory = synced.append
        try:
            m.resize((10, 3))
        except ValueError as exc:
            assert "closed" in str(exc), exc
        else:
            raise SystemExit("the resize went on after the close")
        os.replace = replace
        assert synced == [os.path.realpath(path)], synced
        a = np.load(path)
        assert a.shape == (9, 3) and a.ravel().tolist() == list(range(27)), a
        st = os.stat(path)
        assert _engine.live_views(st.st_dev, st.st_ino) == 0
        assert os.listdir(os.path.dirname(path)) == ["r.npy"], os.listdir(os.path.dirname(path))
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert "ok" in proc.stdout
