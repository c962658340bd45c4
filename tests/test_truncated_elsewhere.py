"""A file truncated by someone else under a writable mapping, with no page touched since:
msync(2) writes nothing back past the end of the file and reports nothing, and the fault guard
hears nothing (no page faulted). flush() said the writes were durable; it now raises
MappedFileError naming the bytes lost. madvise's populate advice on such pages fails with
EFAULT (madvise(2)), which is that same error now, not a bare OSError. No page past the end
is touched in these tests (that would be the fault guard's case)."""
import os

import pytest

import mmarray

pytestmark = pytest.mark.skipif(os.name == "nt", reason="Windows refuses to truncate a "
                                                      "mapped file")


@pytest.fixture
def written(tmp_path):
    path = tmp_path / "t.bin"
    path.write_bytes(bytes(1 << 20))
    m = mmarray.open(path, dtype="f8", mode="r+", offset=4096, shape=(64, 256))
    m.array[:] = 2.0
    yield path, m
    m.close()


def test_flush_past_the_end_of_a_file_truncated_elsewhere_raises(written):
    path, m = written
    os.truncate(path, 4096 + 2048 * 3 + 100)  # rows 0 to 2 whole, row 3 in part
    m.flush(0, 3)                              # covered: durable, no error
    with pytest.raises(mmarray.MappedFileError, match="past the end of the file") as info:
        m.flush()
    assert info.value.range == (4096 + 2048 * 3 + 100, 4096 + 64 * 2048)
    assert info.value.filename == str(path)
    with pytest.raises(mmarray.MappedFileError):
        m.flush(3, 4, sync=False)


def test_flush_of_a_file_replaced_by_another_says_nothing_of_the_new_one(written, tmp_path):
    path, m = written
    other = tmp_path / "other.bin"
    other.write_bytes(b"x")
    os.replace(other, path)   # the mapping keeps the old inode, which is whole
    m.flush()
    assert os.path.getsize(path) == 1


def test_flush_of_a_file_that_covers_the_mapping_does_not_raise(written):
    path, m = written
    os.truncate(path, 4096 + 64 * 2048)  # exactly the mapped end
    m.flush()


def test_populate_advice_on_pages_past_the_end_raises_mapped_file_error(written):
    path, m = written
    os.truncate(path, 4096)
    with pytest.raises(mmarray.MappedFileError, match="could not populate") as info:
        m.advise("populate_write")
    assert info.value.range[1] == 4096 + 64 * 2048
    assert not m.faulted   # nothing was touched: the guard saw no fault
