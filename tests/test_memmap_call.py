"""Calls of mmarray.memmap go through the engine's class vectorcall (set_class_vectorcall),
not type.__call__: each must give what type.__call__ gives -- the object, the errors -- and
keep its rules: __new__ looked up per call, an __init__ other than object's called,
subclasses on type.__call__."""
import pickle

import numpy as np
import pytest

import mmarray
from mmarray import _engine
from helpers import assert_clean_exit, run_python


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 16)
    return str(path)


def _seen(a):
    return (type(a), a.dtype, a.shape, a.mode, a.offset, a.filename, a.tobytes(),
            a.flags.writeable)


CALLS = [
    ((), {}),
    ((np.uint8,), {}),
    ((), {"dtype": np.uint16, "mode": "r"}),
    (("u1", "r", 16, (10, 4)), {}),
    (("u1", "c"), {"order": "F", "shape": (64, 8), "offset": 0}),
    ((), {"mode": "readonly", "offset": 4000}),
]


@pytest.mark.parametrize("args, kwargs", CALLS)
def test_a_call_gives_what_type_call_gives(data, args, kwargs):
    fast = mmarray.memmap(data, *args, **kwargs)
    slow = type.__call__(mmarray.memmap, data, *args, **kwargs)
    assert _seen(fast) == _seen(slow)
    assert pickle.loads(pickle.dumps(fast)).tobytes() == fast.tobytes()
    fast.close()
    slow.close()


@pytest.mark.parametrize("args, kwargs", [
    ((), {"shape": 3, "nope": 1}),                 # an unknown keyword
    ((), {"dtype": "u1", "mode": "x"}),            # a bad mode
    (("u1",), {"dtype": "u1"}),                    # given twice
    (tuple(range(20)), {}),                        # more than the class call takes (16)
    ((), {f"k{i}": i for i in range(20)}),
])
def test_a_bad_call_raises_what_type_call_raises(data, args, kwargs):
    with pytest.raises(Exception) as fast:
        mmarray.memmap(data, *args, **kwargs)
    with pytest.raises(Exception) as slow:
        type.__call__(mmarray.memmap, data, *args, **kwargs)
    assert (type(fast.value), str(fast.value)) == (type(slow.value), str(slow.value))


def test_no_arguments_raise_what_type_call_raises():
    with pytest.raises(TypeError) as fast:
        mmarray.memmap()
    with pytest.raises(TypeError) as slow:
        type.__call__(mmarray.memmap)
    assert str(fast.value) == str(slow.value)


def test_an_init_set_on_the_class_is_called(data, monkeypatch):
    seen = []
    monkeypatch.setattr(mmarray.memmap, "__init__",
                        lambda self, *args, **kwargs: seen.append((args, kwargs)),
                        raising=False)
    a = mmarray.memmap(data, "u1", mode="r")
    assert seen == [((data, "u1"), {"mode": "r"})] and type(a) is mmarray.memmap
    monkeypatch.setattr(mmarray.memmap, "__init__", lambda self, *a, **k: 1 / 0,
                        raising=False)
    with pytest.raises(ZeroDivisionError):
        mmarray.memmap(data, mode="r")


def test_a_replaced_new_is_called(data, monkeypatch):
    original = mmarray.memmap.__new__

    def new(cls, *args, **kwargs):
        return ("replaced", cls, args, kwargs)
    monkeypatch.setattr(mmarray.memmap, "__new__", new)
    assert mmarray.memmap(data, mode="r") == ("replaced", mmarray.memmap, (data,),
                                               {"mode": "r"})
    monkeypatch.setattr(mmarray.memmap, "__new__", original)
    assert type(mmarray.memmap(data, mode="r")) is mmarray.memmap


def test_a_new_returning_another_object_skips_init(data, monkeypatch):
    calls = []
    monkeypatch.setattr(mmarray.memmap, "__new__", lambda cls, *a, **k: 42)
    monkeypatch.setattr(mmarray.memmap, "__init__", lambda self, *a, **k: calls.append(1),
                        raising=False)
    assert mmarray.memmap(data) == 42 and calls == []


def test_subclasses_keep_type_call_and_their_init(data):
    class Sub(mmarray.memmap):
        def __init__(self, *args, **kwargs):
            self.init_args = (args, kwargs)

    a = Sub(data, "u1", mode="r", shape=8)
    assert type(a) is Sub and a.init_args == ((data, "u1"), {"mode": "r", "shape": 8})
    assert a.tolist() == list(range(8))


def test_set_class_vectorcall_refuses_built_in_and_c_types():
    for cls in (int, np.ndarray, _engine.Region):
        with pytest.raises(TypeError, match="made by a class statement"):
            _engine.set_class_vectorcall(cls)
    _engine.set_class_vectorcall(mmarray.memmap)  # again: already set, nothing changes
    with pytest.raises(TypeError):
        _engine.set_class_vectorcall("memmap")


def test_a_new_that_calls_the_class_again_is_a_recursion_error_not_a_crash(data):
    # Helper-67: mm_class_vectorcall called __new__ (and, past 16 arguments, type.__call__)
    # with no recursion guard, so `memmap.__new__ = memmap` overflowed the C stack (SIGSEGV);
    # type.__call__ raises RecursionError there.
    for call in ("mmarray.memmap(path)", "type.__call__(mmarray.memmap, path)"):
        proc = run_python(f"""
            import mmarray
            path = {data!r}
            mmarray.memmap.__new__ = mmarray.memmap
            try:
                {call}
            except RecursionError as exc:
                print("RecursionError")
        """, timeout=120)
        assert_clean_exit(proc)
        assert proc.stdout.strip() == "RecursionError", proc.stdout
