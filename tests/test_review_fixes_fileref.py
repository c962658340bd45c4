"""A reference is pickled only while its file's name leads to the mapped file, and is
unpickled only onto that same file (device, inode, and birth time where one was recorded)."""
import os
import pickle

import pytest

import mmarray
from mmarray import _engine, _fileref

pytestmark = pytest.mark.skipif(os.name == "nt", reason="birth times by name: POSIX paths")


def _atomic_save(path, value):
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes([value]) * 8192)
    os.replace(tmp, path)


def test_pickling_a_mapping_whose_name_was_replaced_is_refused(tmp_path):
    """The birth time was read by name and silently recorded as 0 when the name led to
    another file, so a later inode reuse passed the check (/tmp/a6/t_birth.py)."""
    path = tmp_path / "data.bin"
    _atomic_save(path, 1)
    with mmarray.open(path, dtype="u1", mode="r+") as m:
        _atomic_save(path, 2)
        with pytest.raises(ValueError, match="replaced or renamed") as info:
            pickle.dumps(m)
        assert str(path) in str(info.value)
        with pytest.raises(ValueError, match="replaced or renamed"):
            mmarray.ref(m.array)


def test_pickling_a_mapping_whose_file_was_deleted_is_refused(tmp_path):
    path = tmp_path / "data.bin"
    _atomic_save(path, 1)
    with mmarray.open(path, dtype="u1", mode="r") as m:
        os.remove(path)
        with pytest.raises(ValueError, match="deleted, replaced or renamed"):
            pickle.dumps(m)


def _mapped(path):
    _atomic_save(path, 1)
    return mmarray.open(path, dtype="u1", mode="r")


def test_verify_refuses_another_birth_time(tmp_path):
    path = tmp_path / "data.bin"
    m = _mapped(path)
    dev, ino, birth = _engine.path_identity(os.fsencode(path))
    if not birth:
        m.close()
        pytest.skip("this filesystem keeps no birth times")
    with pytest.raises(ValueError, match="born at another time"):
        _fileref.verify(m, str(path), (dev, ino, birth + 1), _fileref.host_id())
    assert m.closed


def test_verify_refuses_a_recorded_birth_it_cannot_read_again(tmp_path):
    path = tmp_path / "data.bin"
    m = _mapped(path)
    dev, ino, birth = _engine.path_identity(os.fsencode(path))
    os.remove(path)
    with pytest.raises(ValueError, match="no longer leads to the file"):
        _fileref.verify(m, str(path), (dev, ino, birth or 1), _fileref.host_id())
    assert m.closed


def test_verify_passes_the_same_file(tmp_path):
    path = tmp_path / "data.bin"
    m = _mapped(path)
    again = pickle.loads(pickle.dumps(m))
    assert bytes(again.array[:2]) == b"\x01\x01"
    again.close()
    m.close()
