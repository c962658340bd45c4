"""Crafted pickles of a Mapping, an ArrayRef and an mmarray.memmap get TypeError/ValueError
naming the bad value, before anything is mapped (/tmp/a6/t_craft.py, t_craft_ref.py)."""
import os

import numpy as np
import pytest

import mmarray
from mmarray import _fileref
from mmarray._compat import _memmap_from_ref
from mmarray._mapping import _reopen
from mmarray._share import _rebuild

U1 = np.dtype("u1")


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "c.bin"
    path.write_bytes(bytes(range(256)) * 32)
    st = os.stat(path)
    return str(path), (st.st_dev, st.st_ino, 0), _fileref.host_id()


@pytest.mark.parametrize("change, kind, says", [
    ({"shape": (-2, -3)}, ValueError, "(-2, -3)"),
    ({"shape": (2**62, 2**62)}, ValueError, "2**63"),
    ({"shape": (2**63,)}, ValueError, "2**63"),
    ({"shape": (2.5,)}, TypeError, "2.5"),
    ({"shape": (True,)}, TypeError, "True"),
    ({"offset": -4096}, ValueError, "-4096"),
    ({"offset": True}, TypeError, "bool"),
    ({"offset": 2**64}, ValueError, str(2**64)),
    ({"offset": 2**63 - 1}, ValueError, "2**63"),
    ({"identity": (1,)}, TypeError, "(1,)"),
    ({"identity": ()}, TypeError, "()"),
    ({"identity": "abc"}, TypeError, "abc"),
    ({"identity": (1, 2, -3)}, TypeError, "-3"),
    ({"host": None}, TypeError, "None"),
    ({"order": "X"}, ValueError, "X"),
])
def test_reopen_refuses_crafted_fields_before_mapping(data, change, kind, says):
    path, identity, host = data
    fields = {"filename": path, "offset": 0, "dtype": U1, "shape": (10,), "order": "C",
              "mode": "r", "identity": identity, "host": host}
    fields.update(change)
    with pytest.raises(kind) as info:
        _reopen(**fields)
    assert says in str(info.value)


def _ref_fields(data, **change):
    path, identity, host = data
    fields = {"filename": path, "identity": identity, "host": host, "offset": 0,
              "length": 10, "start": 0, "dtype": U1, "shape": (10,), "strides": (1,),
              "writable": True}
    fields.update(change)
    return tuple(fields.values())


@pytest.mark.parametrize("change, kind", [
    ({"offset": 100, "strides": (-1,)}, ValueError),      # reaches below the mapped bytes
    ({"strides": (100,)}, ValueError),                    # past them
    ({"start": 50}, ValueError),
    ({"shape": (2**62, 2**62), "strides": (1, 1)}, ValueError),
    ({"shape": (-1,)}, ValueError),
    ({"length": 0, "shape": (-5,)}, ValueError),
    ({"offset": 2**64}, ValueError),
    ({"length": 2**64}, ValueError),
    ({"start": 2**64}, ValueError),
    ({"offset": 2**63}, ValueError),
    ({"writable": 2}, TypeError),
    ({"writable": "no"}, TypeError),
    ({"dtype": np.dtype("f8"), "strides": (8,)}, ValueError),
    ({"identity": (1,)}, TypeError),
])
def test_array_ref_refuses_crafted_fields(data, change, kind):
    with pytest.raises(kind):
        _rebuild(*_ref_fields(data, **change))


def test_array_ref_accepts_what_ref_makes(data):
    ref = _rebuild(*_ref_fields(data))
    assert bytes(ref.array) == bytes(range(10))
    back = _rebuild(*_ref_fields(data, offset=100, start=9, strides=(-1,)))
    assert list(back.array[:2]) == [109, 108]
    broadcast = _rebuild(*_ref_fields(data, length=1, shape=(2**40,), strides=(0,)))
    assert broadcast.array.shape == (2**40,)


@pytest.mark.parametrize("mode, writable", [("w+", True), ("c", True), ("r+", False),
                                            ("r", True), (["r"], False)])
def test_memmap_unpickle_refuses_a_mode_that_does_not_match(data, mode, writable):
    ref = _rebuild(*_ref_fields(data, writable=writable))
    with pytest.raises(ValueError, match="mode"):
        _memmap_from_ref(ref, data[0], 0, mode)


def test_memmap_unpickle_refuses_something_else_than_a_ref(data):
    with pytest.raises(ValueError, match="ArrayRef"):
        _memmap_from_ref(np.zeros(3), data[0], 0, "r")


def test_memmap_pickles_round_trip_in_each_mode(data):
    import pickle
    for mode in ("r", "r+"):
        mm = mmarray.memmap(data[0], dtype="u1", mode=mode)
        back = pickle.loads(pickle.dumps(mm[3:5]))
        assert back.mode == mode and list(back) == [3, 4]
