"""Member names of .npz archives (audit 2, s20): save_npz checks every name against what a
zip archive can hold before it writes anything; mmarray.load names members as np.load does."""
import io
import os
import zipfile

import numpy as np
import pytest

import mmarray


def test_save_npz_refuses_a_name_over_65535_bytes_before_writing_anything(tmp_path):
    ok = "x" * (65535 - 4)          # with ".npy", exactly what the 16-bit field holds
    path = tmp_path / "n.npz"
    mmarray.save_npz(path, a=np.ones(2), **{ok: np.arange(3)})
    assert np.load(path)[ok].tolist() == [0, 1, 2]
    before = path.read_bytes()
    long = "y" * (65535 - 3)
    with pytest.raises(ValueError) as info:
        mmarray.save_npz(path, a=np.ones(2), **{long: np.ones(2)})
    message = str(info.value)
    assert "65535" in message and "'yyyy" in message and len(message) < 400
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["n.npz"]
    buf = io.BytesIO()
    with pytest.raises(ValueError, match="65535"):
        mmarray.save_npz(buf, a=np.ones(2), **{long: np.ones(2)})
    assert buf.getvalue() == b""    # not even the first member


def test_save_npz_refuses_a_name_utf8_cannot_encode_naming_it(tmp_path):
    buf = io.BytesIO()
    with pytest.raises(ValueError, match=r"member name 'a\\udcff' cannot be encoded as UTF-8"):
        mmarray.save_npz(buf, first=np.ones(2), **{"a\udcff": np.ones(2)})
    assert buf.getvalue() == b""


def test_save_npz_refuses_a_name_holding_a_null_byte(tmp_path):
    buf = io.BytesIO()
    with pytest.raises(ValueError, match=r"null byte .* read back as 'a'"):
        mmarray.save_npz(buf, first=np.ones(2), **{"a\0b": np.ones(2)})
    assert buf.getvalue() == b""


def _archive_with_names(path, names):
    """A .npz (np.savez's layout) whose members are named ``names``, which may hold NUL
    (zipfile cuts names at NUL when writing, so the names are patched in afterwards)."""
    placeholders = {name: name.replace("\0", "#") for name in names}
    with zipfile.ZipFile(path, "w") as zf:
        for i, name in enumerate(names):
            buf = io.BytesIO()
            np.save(buf, np.arange(i, i + 3))
            # A fixed time: the archive's bytes do not depend on the clock (a DOS time once
            # held the byte of a one-letter name, which the count below then found 6 times).
            zf.writestr(zipfile.ZipInfo(placeholders[name], date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())
    data = path.read_bytes()
    for name, placeholder in placeholders.items():
        if placeholder == name:
            continue  # no NUL: nothing to patch
        assert data.count(placeholder.encode()) == 2  # local header and directory entry
        data = data.replace(placeholder.encode(), name.encode())
    path.write_bytes(data)


@pytest.mark.parametrize("names", [["a\0b"], ["a\0b.npy"], ["x.npy\0junk", "y.npy"],
                                   ["p\0.npy", "q"]])
def test_load_names_members_holding_a_null_byte_as_np_load_does(tmp_path, names):
    path = tmp_path / "nul.npz"
    _archive_with_names(path, names)
    with np.load(path) as ref:
        expected = {key: ref[key].tolist() for key in ref.files}
    with mmarray.load(path) as npz:
        assert list(npz) == list(expected)
        assert {key: npz[key].array.tolist() for key in npz} == expected


def test_a_key_ending_in_npy_is_looked_up_as_np_load_does(tmp_path):
    """With members 'a' and 'a.npy' (stored as a.npy and a.npy.npy), npz['a.npy'] gave the
    second where np.load gives the first: a member's own name comes first."""
    path = str(tmp_path / "s.npz")
    np.savez(path, **{"a": np.array([1, 1]), "a.npy": np.array([2, 2])})
    with np.load(path) as want, mmarray.load(path) as got:
        assert list(got) == want.files
        for key in ("a", "a.npy", "a.npy.npy"):
            assert got[key].array.tolist() == want[key].tolist(), key
