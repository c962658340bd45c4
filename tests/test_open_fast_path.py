"""The fast paths of issue #13: mmarray.open and mmarray.memmap of a str path mapped whole
(_engine.open_to_end), and mmarray.load of a .npy whose header was seen before
(_engine.map_by_header). Each must give what the general path gives -- the same mapping,
array, pickle, errors -- and keep every guarantee of it: the live-view registry, the fault
guard (and set_fault_guard(False)), fork safety, arrays that outlive close()."""
import codecs
import contextlib
import os
import pickle
import sys

import numpy as np
import pytest

import mmarray
from mmarray import _api, _compat, _engine, _load
from helpers import assert_clean_exit, run_python

POSIX = os.name != "nt"


@contextlib.contextmanager
def fast_open_off():
    """mmarray.open and mmarray.memmap on their general path: the engine's tables are
    emptied, so open_to_end takes nothing and the engine's open calls the general open."""
    _engine.set_fast_open({}, {}, mmarray.Mapping, _api._abspath, False, POSIX,
                          _api._general_open)
    try:
        yield
    finally:
        _api.install_fast_open()


@pytest.fixture
def general(monkeypatch):
    """A function that turns every fast path off (each then falls to the general path)."""
    with contextlib.ExitStack() as stack:
        def off():
            stack.enter_context(fast_open_off())
            monkeypatch.setattr(_load, "_map_by_header", lambda *args: None)
        yield off


FLAGS = ("C_CONTIGUOUS", "F_CONTIGUOUS", "OWNDATA", "WRITEABLE", "ALIGNED",
         "WRITEBACKIFCOPY")


def _flags(a):
    return {name: a.flags[name] for name in FLAGS}


def _state(m):
    """What a Mapping shows: every attribute the general path sets, its array and pickle."""
    a = m.array
    return dict(type=type(m), mode=m.mode, filename=m.filename, offset=m.offset,
                dtype=m.dtype, shape=m.shape, order=m.order, closed=m.closed,
                exports=m.exports, identity=m._identity(), nbytes=m.nbytes,
                array_type=type(a), flags=_flags(a), data=a.tobytes(),
                base_type=type(a.base), mapping_of=mmarray._api.mapping_of(a) is m,
                pickle=(m.__reduce__() if m.mode != "c" else None))


def _error(fn, *args, **kwargs):
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    return type(info.value), str(info.value), getattr(info.value, "errno", None)


def test_the_fast_path_is_taken_for_the_common_case(data):
    m = _engine.open_to_end(str(data), "uint8", "r", 0, None, "C", False, None)
    assert isinstance(m, mmarray.Mapping)
    m.close()
    for args in [(os.fsencode(data), "uint8", "r", 0, None, "C", False, None),
                 (data, "uint8", "r", 0, None, "C", False, None),
                 (str(data), "uint8", "w+", 0, None, "C", False, None),
                 (str(data), "uint8", "r", 1, None, "C", False, None),
                 (str(data), "uint8", "r", 0, 16, "C", False, None),
                 (str(data), "uint8", "r", 0, None, "F", False, None),
                 (str(data), "uint8", "r", 0, None, "C", True, None),
                 (str(data), "uint8", "r", 0, None, "C", False, "random"),
                 (str(data), [("a", "u1")], "r", 0, None, "C", False, None),
                 (str(data) + "\0", "uint8", "r", 0, None, "C", False, None),
                 ("", "uint8", "r", 0, None, "C", False, None),
                 (str(data), "uint8", "bogus", 0, None, "C", False, None),
                 (str(tmp := data.parent / "missing"), "uint8", "r", 0, None, "C", False, None)]:
        assert _engine.open_to_end(*args) is None, args
    del tmp


def test_a_fast_mapping_makes_its_shape_tuple_once_whichever_is_asked_first(data):
    # The fast open leaves the 1-D shape as a length until something asks for the tuple.
    n = data.stat().st_size // 4
    m = mmarray.open(str(data), dtype="f4", mode="r+")
    assert m.array.shape == (n,)                 # the array first: no tuple needed
    assert m.size == n and m.nbytes == 4 * n
    assert m.shape == (n,) and m.shape is m.shape
    assert f"shape={(n,)}" in repr(m)
    with pytest.raises(ValueError, match="set once"):
        m._set_shape((n,))
    m.close()
    m = mmarray.open(str(data), dtype="f4", mode="r+")
    assert repr(m).count(f"shape={(n,)}") == 1   # repr first
    m.close()
    m = mmarray.open(str(data), dtype="f4", mode="r+")
    with pytest.raises(ValueError, match="set once"):
        m._set_shape((n,))                       # refused before any tuple was made
    m.resize(2 * n)                              # a new shape before the first was asked
    assert m.shape == (2 * n,) and m.array.shape == (2 * n,)
    m.close()


@pytest.mark.parametrize("mode", ["r", "r+", "c", "readonly", "readwrite", "copyonwrite"])
@pytest.mark.parametrize("dtype", ["uint8", np.uint8, "f4", np.dtype("i2"), "S16"])
def test_open_gives_what_the_general_path_gives(data, general, mode, dtype):
    fast = mmarray.open(str(data), dtype=dtype, mode=mode)   # caches the dtype
    fast.close()
    fast = mmarray.open(str(data), dtype=dtype, mode=mode)
    got = _state(fast)
    general()
    slow = mmarray.open(str(data), dtype=dtype, mode=mode)
    assert got == _state(slow)
    fast.close()
    slow.close()


def test_str_bytes_and_pathlike_paths_give_the_same_mapping(data, monkeypatch):
    monkeypatch.chdir(data.parent)
    states = [_state(mmarray.open(p, mode="r")) for p in
              [str(data), os.fsencode(data), data, "data.bin", "./data.bin",
               str(data.parent) + "//data.bin", str(data.parent / "." / "data.bin")]]
    assert all(s == states[0] for s in states), states
    assert states[0]["filename"] == os.path.abspath(data)


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "bad mode", "not multiple",
                                  "w+ without shape", "null byte", "empty path"])
def test_errors_are_those_of_the_general_path(tmp_path, general, case):
    target = tmp_path / "x.bin"
    kwargs = {"mode": "r", "dtype": "uint8"}
    if case == "directory":
        target = tmp_path
    elif case == "empty":
        target.write_bytes(b"")
    elif case == "bad mode":
        target.write_bytes(b"x" * 8)
        kwargs["mode"] = "rw"
    elif case == "not multiple":
        target.write_bytes(b"x" * 9)
        kwargs["dtype"] = "f8"
        mmarray.open(str(tmp_path / "x.bin"), mode="w+", dtype="f8", shape=1).close()
        target.write_bytes(b"x" * 9)
    elif case == "w+ without shape":
        kwargs["mode"] = "w+"
    paths = [str(target), os.fsencode(target), target]
    if case == "null byte":
        paths = [str(target) + "\0"]
    elif case == "empty path":
        paths = [""]
    for path in paths:
        fast = _error(mmarray.open, path, **kwargs)
        fast_memmap = _error(mmarray.memmap, path, **kwargs)
        with fast_open_off():
            assert _error(mmarray.open, path, **kwargs) == fast
            assert _error(mmarray.memmap, path, **kwargs) == fast_memmap
    assert not target.is_file() or case != "missing"


def test_memmap_gives_what_the_general_path_gives(data, general):
    def state(a):
        return (type(a), a.filename, a.offset, a.mode, a.dtype, a.shape, _flags(a),
                a.tobytes(), type(a._mmap), a._mmap.filename, a._mmap.mode,
                a._mmap._identity(), pickle.loads(pickle.dumps(a)).tobytes(),
                {k: v for k, v in vars(a).items() if k != "_mmap"}, sorted(vars(a)))
    for mode in ["r", "r+", "c"]:
        fast = mmarray.memmap(str(data), dtype=np.uint8, mode=mode)
        got = state(fast)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_compat, "_array_to_end", lambda *args: None)
            slow = mmarray.memmap(str(data), dtype=np.uint8, mode=mode)
        assert got == state(slow)
        del fast, slow


class _Tagged(mmarray.memmap):
    """A memmap subclass whose __array_finalize__ sets an attribute of its own."""

    def __array_finalize__(self, obj):
        super().__array_finalize__(obj)
        self.tag = "finalized"


def test_a_memmap_subclass_on_the_fast_path_keeps_its_own_attributes(data, general):
    def state(a):
        return (type(a), a.tag, a.filename, a.offset, a.mode, type(a._mmap), a.tobytes(),
                {k: v for k, v in vars(a).items() if k != "_mmap"})
    fast = _Tagged(str(data), dtype=np.uint8, mode="r")
    assert type(fast._mmap) is mmarray.Mapping and fast._mmap.filename == str(data)
    got = state(fast)
    general()
    slow = _Tagged(str(data), dtype=np.uint8, mode="r")
    assert got == state(slow)
    assert got[1:5] == ("finalized", str(data), 0, "r")


NAMES = ("_mmap", "offset", "mode", "filename")


def test_array_to_end_leaves_a_class_that_makes_no_array_to_the_general_path(data):
    st = os.stat(data)
    for subtype in (dict, object, 3, None):
        assert _engine.array_to_end(subtype, NAMES, str(data), "uint8", "r", 0, None,
                                    "C") is None
    for names in [(), NAMES[:3], NAMES + ("x",), ("a", "b", "c", 4)]:
        with pytest.raises(TypeError, match="names must be four str"):
            _engine.array_to_end(np.ndarray, names, str(data), "uint8", "r", 0, None, "C")
    assert _engine.array_to_end(np.ndarray, NAMES, str(data), "uint8", "r", 8, None,
                                "C") is None
    assert _engine.live_views(st.st_dev, st.st_ino) == 0
    # numpy.memmap's errors, not the engine's, for a class that is no ndarray's
    for path, mode, expected in [("/nonexistent/x", "r", FileNotFoundError),
                                 (str(data), "zz", ValueError)]:
        for memmap in (mmarray.memmap, np.memmap):
            with pytest.raises(expected):
                memmap.__new__(dict, path, np.uint8, mode)


class _Watched(np.ndarray):
    """An ndarray subclass that records the attributes set on its arrays."""
    seen: list = []

    def __setattr__(self, name, value):
        _Watched.seen.append(name)
        super().__setattr__(name, value)


def test_array_to_end_sets_the_attributes_one_dict_or_one_by_one(data):
    st = os.stat(data)
    for subtype in (np.ndarray, _Watched):
        if subtype is np.ndarray:
            with pytest.raises(AttributeError):  # no instance dictionary to put them in
                _engine.array_to_end(subtype, NAMES, str(data), "uint8", "r", 0, None, "C")
            continue
        a = _engine.array_to_end(subtype, NAMES, str(data), "uint8", "r", 0, None, "C")
        m = a._mmap
        assert (type(a), a.tobytes(), a.offset, a.mode, a.filename) == \
            (subtype, data.read_bytes(), 0, "r", m.filename)
        assert _Watched.seen == list(NAMES)     # its own __setattr__, in numpy's order
        assert _engine.live_views(st.st_dev, st.st_ino) == 1 and m.exports == 1
        m.close()
        del a
    assert _engine.live_views(st.st_dev, st.st_ino) == 0


def test_a_finalize_patched_onto_memmap_keeps_what_it_sets_on_the_fast_path(data, general):
    original = mmarray.memmap.__array_finalize__

    def tagging(self, obj):
        original(self, obj)
        self.tag = "t"

    def setattr_watching(self, name, value):
        seen.append(name)
        object.__setattr__(self, name, value)

    mmarray.memmap(str(data), dtype=np.uint8, mode="r")  # np.uint8 in the dtype table
    filename_property = property(lambda self: self.__dict__.get("_name", "unset"),
                                 lambda self, value: self.__dict__.__setitem__("_name", value))
    for name, patch in [("__array_finalize__", tagging), ("__setattr__", setattr_watching),
                        ("filename", filename_property)]:
        seen = []
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(mmarray.memmap, name, patch)
            fast = mmarray.memmap(str(data), dtype=np.uint8, mode="r")
            assert type(fast._mmap) is mmarray.Mapping
            got = {k: v for k, v in vars(fast).items() if k != "_mmap"}, list(seen)
            seen.clear()
            with pytest.MonkeyPatch.context() as off:
                off.setattr(_compat, "_array_to_end", lambda *args: None)
                slow = mmarray.memmap(str(data), dtype=np.uint8, mode="r")
            assert got == ({k: v for k, v in vars(slow).items() if k != "_mmap"}, seen)
        assert got[0].get("tag") == ("t" if name == "__array_finalize__" else None)
        if name == "filename":   # the property's setter stored it
            assert got[0]["_name"] == str(data) and "filename" not in got[0]
        del fast, slow


def test_only_a_compiled_finalize_is_trusted():
    # A Python function's frame is seen by profile and trace hooks and runs signal handlers,
    # which could keep the array before it has its base (helper-70: SIGSEGV with _compat
    # run as Python). mmarray.memmap's own function is compiled.
    class Interpreted(np.ndarray):
        def __array_finalize__(self, obj):
            pass
    assert _engine.trust_array_finalize(Interpreted) is False
    assert _engine.trust_array_finalize(mmarray.memmap) is True
    with pytest.raises(TypeError, match="subclass of numpy.ndarray"):
        _engine.trust_array_finalize(dict)


def test_a_subclass_finalize_that_raises_leaves_nothing_mapped(data):
    class Raising(mmarray.memmap):
        def __array_finalize__(self, obj):
            raise RuntimeError("no")
    st = os.stat(data)
    with pytest.raises(RuntimeError, match="no"):
        Raising(str(data), dtype=np.uint8, mode="r")
    import gc
    gc.collect()
    assert _engine.live_views(st.st_dev, st.st_ino) == 0


def test_pickling_by_reference_round_trips(data):
    m = mmarray.open(str(data), mode="r")
    other = pickle.loads(pickle.dumps(m))
    assert other.filename == m.filename and other._identity() == m._identity()
    assert np.array_equal(other.array, m.array)
    other.close()
    m.close()


def test_registry_guard_and_lifetimes(data):
    st = os.stat(data)
    m = mmarray.open(str(data), mode="r")
    assert _engine.live_views(st.st_dev, st.st_ino) == 1
    with pytest.raises(ValueError):  # 'w+' would truncate pages this process maps
        mmarray.open(str(data), mode="w+", shape=8)
    a = m.array
    m.close()
    assert m.closed and m.exports == 1
    assert a[5] == 5                  # the array outlives close()
    assert _engine.live_views(st.st_dev, st.st_ino) == 1
    del a
    assert _engine.live_views(st.st_dev, st.st_ino) == 0
    m.close()                         # close() again: a no-op


def test_the_registry_counts_many_files_and_forgets_them(tmp_path):
    paths = []
    for i in range(300):              # enough to grow the registry's table several times
        p = tmp_path / f"f{i}.bin"
        p.write_bytes(b"x" * (i + 1))
        paths.append(p)
    maps = [mmarray.open(str(p), mode="r") for p in paths]
    twice = [mmarray.open(str(p), mode="r") for p in paths[::3]]
    for i, p in enumerate(paths):
        st = os.stat(p)
        assert _engine.live_views(st.st_dev, st.st_ino) == (2 if i % 3 == 0 else 1)
    for m in maps[::2]:
        m.close()
    for i, p in enumerate(paths):
        st = os.stat(p)
        assert _engine.live_views(st.st_dev, st.st_ino) == (i % 2) + (i % 3 == 0)
    for m in maps + twice:
        m.close()
    assert all(_engine.live_views(os.stat(p).st_dev, os.stat(p).st_ino) == 0 for p in paths)
    assert _engine.live_views(-1, 0) == 0 and _engine.live_views(0, 2**70) == 0


@pytest.mark.skipif(not POSIX, reason="the fault guard is POSIX only")
@pytest.mark.parametrize("guard", [True, False])
def test_the_fault_guard_covers_fast_mappings_and_can_be_turned_off(tmp_path, guard):
    path = tmp_path / "t.bin"
    proc = run_python(f"""
        import os, time, numpy as np, mmarray
        from mmarray import _engine
        path = {str(path)!r}
        with open(path, "wb") as f:
            f.write(b"x" * (1 << 20))
        mmarray.set_fault_guard({guard})
        m = mmarray.open(path, mode="r")
        assert type(m) is mmarray.Mapping
        a = m.array
        os.truncate(path, 4096)
        try:
            int(a[-1])
            time.sleep(0.5)  # the exception comes at the thread's next chance
        except mmarray.MappedFileError:
            print("raised", m.faulted)
    """, timeout=120)
    if guard:
        assert_clean_exit(proc)
        assert proc.stdout.split() == ["raised", "True"]
    else:
        assert proc.returncode < 0, proc  # SIGBUS takes its default course


def test_a_writable_mapping_that_faulted_still_raises_at_close():
    class Probe(mmarray.Mapping):
        __slots__ = ()
    # close is Region's (through the descriptor set_close_method made), which calls the
    # class's _closed_faulted
    assert Probe.close is mmarray.Mapping.__dict__["close"]
    assert mmarray.Mapping._closed_faulted is not _engine.Region._closed_faulted


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_child_maps_and_counts_on_its_own(data):
    proc = run_python(f"""
        import os, mmarray
        from mmarray import _engine
        path = {str(data)!r}
        st = os.stat(path)
        m = mmarray.open(path, mode="r")
        pid = os.fork()
        if pid == 0:
            ok = _engine.live_views(st.st_dev, st.st_ino) == 1 and m.array[3] == 3
            c = mmarray.open(path, mode="r")
            ok = ok and _engine.live_views(st.st_dev, st.st_ino) == 2
            c.close(); m.close()
            ok = ok and _engine.live_views(st.st_dev, st.st_ino) == 0
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert status == 0, status
        assert _engine.live_views(st.st_dev, st.st_ino) == 1
        m.close()
        print("ok")
    """)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["ok"]


def test_a_replaced_file_is_seen_fresh(tmp_path):
    path = tmp_path / "r.bin"
    path.write_bytes(b"a" * 4096)
    first = mmarray.open(str(path), mode="r")
    new = tmp_path / "new.bin"
    new.write_bytes(b"b" * 8192)
    os.replace(new, path)             # rename over: same path, another inode
    second = mmarray.open(str(path), mode="r")
    assert second.shape == (8192,) and bytes(second.array[:1]) == b"b"
    assert bytes(first.array[:1]) == b"a" and first._identity() != second._identity()
    first.close()
    second.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX bytes file names")
def test_a_path_the_fast_path_cannot_encode_takes_the_general_path(tmp_path):
    name = os.fsdecode(b"caf\xe9.bin")  # a lone surrogate: not UTF-8 encodable strictly
    path = os.path.join(str(tmp_path), name)
    with open(path, "wb") as f:
        f.write(b"z" * 64)
    assert _engine.open_to_end(path, "uint8", "r", 0, None, "C", False, None) is None
    with mmarray.open(path, mode="r") as m:
        assert m.filename == path and m.shape == (64,)


# -- .npy ----------------------------------------------------------------------------------------

@pytest.fixture
def npys(tmp_path):
    paths = []
    for i, arr in enumerate([np.arange(512.0), np.arange(24, dtype="<i4").reshape(4, 6),
                             np.asfortranarray(np.arange(6.0).reshape(2, 3)),
                             np.arange(3, dtype=">u2")]):
        p = tmp_path / f"a{i}.npy"
        np.save(p, arr)
        paths.append(p)
    return paths


@pytest.mark.parametrize("mode", ["r", "c", "r+"])
def test_load_gives_what_the_general_path_gives(npys, general, mode):
    for p in npys:
        mmarray.load(str(p), mode=mode).close()  # the header is known from now on
        fast = mmarray.load(str(p), mode=mode)
        got = _state(fast)
        assert got["data"] == np.load(p).tobytes()
        header = fast._header_length if mode == "r+" else None
        fast.close()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_load, "_map_by_header", lambda *args: None)
            slow = mmarray.load(str(p), mode=mode)
        assert got == _state(slow)
        assert header == (slow._header_length if mode == "r+" else None)
        slow.close()


def test_load_fast_path_is_taken_and_resizes(npys):
    p = str(npys[1])
    mmarray.load(p).close()
    taken = _engine.map_by_header(p, _engine.READ, "r", _load._HEAD, _load._known_header,
                                  mmarray.Mapping)
    assert isinstance(taken, mmarray.Mapping) and taken.shape == (4, 6)
    taken.close()
    with mmarray.load(p, mode="r+") as m:
        m.resize(6)
        m.array[4:] = 7
        m.flush()
    assert np.load(p).shape == (6, 6) and (np.load(p)[4:] == 7).all()


@pytest.mark.parametrize("case", ["missing", "directory", "truncated data", "not npy",
                                  "small max_header_size", "rows"])
def test_load_errors_and_options_are_those_of_the_general_path(tmp_path, npys, case):
    p = npys[0]
    mmarray.load(str(p)).close()
    kwargs = {}
    if case == "missing":
        p = tmp_path / "missing.npy"
    elif case == "directory":
        p = tmp_path
    elif case == "truncated data":
        raw = p.read_bytes()
        p.write_bytes(raw[:-8])      # the same (known) header, 8 bytes of data fewer
    elif case == "not npy":
        p.write_bytes(b"not a .npy file at all")
    elif case == "small max_header_size":
        kwargs["max_header_size"] = 10
    elif case == "rows":
        kwargs["rows"] = slice(2, 5)
    if case == "rows":
        with mmarray.load(str(p), **kwargs) as m:
            assert m.shape == (3,) and m.array.tolist() == [2.0, 3.0, 4.0]
        return
    fast = _error(mmarray.load, str(p), **kwargs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_load, "_map_by_header", lambda *args: None)
        assert _error(mmarray.load, str(p), **kwargs) == fast


def test_load_sees_a_replaced_npy_fresh(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(10.0))
    first = mmarray.load(str(path))
    np.save(tmp_path / "y.npy", np.arange(10.0) * 2)   # the same header, other data
    os.replace(tmp_path / "y.npy", path)
    second = mmarray.load(str(path))
    assert second.array.tolist() == (np.arange(10.0) * 2).tolist()
    np.save(tmp_path / "z.npy", np.ones((3, 2), dtype="i2"))  # another header
    os.replace(tmp_path / "z.npy", path)
    third = mmarray.load(str(path))
    assert third.shape == (3, 2) and third.dtype == np.dtype("i2")
    assert first.array.tolist() == list(range(10))
    assert len({m._identity() for m in (first, second, third)}) == 3
    for m in (first, second, third):
        m.close()


def test_map_by_header_checks_the_layout(npys):
    p = str(npys[0])
    dt = np.dtype("f8")
    with pytest.raises(ValueError):
        _engine.map_by_header(p, _engine.READ, "r", 64,
                              lambda first: (128, 100, dt, (512,), "C"), mmarray.Mapping)
    with pytest.raises(TypeError):
        _engine.map_by_header(p, _engine.READ, "r", 64,
                              lambda first: (128, 8, "f8", (1,), "C"), mmarray.Mapping)
    with pytest.raises(ZeroDivisionError):
        _engine.map_by_header(p, _engine.READ, "r", 64, lambda first: 1 / 0, mmarray.Mapping)
    # dtypes that cannot be mapped (read from numpy's C struct: hasobject, itemsize 0)
    for bad in (np.dtype(object), np.dtype([("a", "f8"), ("o", object)]), np.dtype("V0"),
                np.dtype("S0")):
        with pytest.raises(TypeError, match="layout gave dtype"):
            _engine.map_by_header(p, _engine.READ, "r", 64,
                                  lambda first, bad=bad: (128, 8, bad, (1,), "C"),
                                  mmarray.Mapping)
    # a dtype of plain data with fields maps (the checks do not refuse it)
    rec = np.dtype([("a", "<f4"), ("b", "<i4")])
    m = _engine.map_by_header(p, _engine.READ, "r", 64,
                              lambda first: (128, 8, rec, (1,), "C"), mmarray.Mapping)
    assert m is not None and m.dtype == rec and m.shape == (1,)
    m.close()
    # Data past the end of the file: the map fails, so None (the general path says why).
    assert _engine.map_by_header(p, _engine.READ, "r", 64,
                                 lambda first: (128, 8 * 600, dt, (600,), "C"),
                                 mmarray.Mapping) is None
    st = os.stat(p)
    assert _engine.live_views(st.st_dev, st.st_ino) == 0


def test_a_dataset_sharing_one_header_is_answered_without_calling_back(tmp_path, monkeypatch):
    # The engine looks the whole prefix up in _load._prefixes (filled by _known_header's
    # answers): the second and later files with the same header make no Python call.
    paths = []
    for i in range(5):
        p = tmp_path / f"d{i}.npy"
        np.save(p, np.arange(64.0) + i)
        paths.append(str(p))
    calls = []
    real = _load._known_header

    def counting(first):
        calls.append(len(first))
        return real(first)
    monkeypatch.setattr(_load, "_known_header", counting)
    monkeypatch.setattr(_load, "_prefixes", {})
    monkeypatch.setattr(_load, "_prefix_lengths", ())
    cache = {}                              # an empty header cache, the same for both
    monkeypatch.setattr(_load, "_header_cache", cache)
    monkeypatch.setattr(_load._fmt, "header_cache", cache)
    mmarray.load(paths[0]).close()          # asked (unknown): parsed and answered
    for i, p in enumerate(paths):
        with mmarray.load(p) as m:
            assert type(m) is mmarray.Mapping and m.offset == 128
            assert m.array.tolist() == (np.arange(64.0) + i).tolist()
    assert len(calls) == 1                  # the first load only
    assert _load._prefix_lengths == (128,) and len(_load._prefixes) == 1


def test_a_header_not_seen_before_is_mapped_in_the_engines_one_open(tmp_path, monkeypatch):
    # A dataset whose files all differ in shape: each header is parsed once, in the engine's
    # call back, and the file is mapped from that same open (no second open by the general
    # path, which would cost a second open and read per file).
    paths = []
    for i in range(4):
        p = tmp_path / f"s{i}.npy"
        np.save(p, np.arange(8.0 + i))
        paths.append(str(p))
    monkeypatch.setattr(_load, "_prefixes", {})
    monkeypatch.setattr(_load, "_prefix_lengths", ())
    cache = {}
    monkeypatch.setattr(_load, "_header_cache", cache)
    monkeypatch.setattr(_load._fmt, "header_cache", cache)
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    for i, p in enumerate(paths):
        with mmarray.load(p) as m:
            assert m.array.tolist() == np.arange(8.0 + i).tolist()
    assert opened == []                      # no general path
    assert len(cache) == 4 and len(_load._prefixes) == 4


def test_a_bad_header_in_the_call_back_is_left_to_the_general_path(tmp_path):
    # A header of numpy's form whose descr is no dtype: the call back says None, and the
    # general path raises, naming the file.
    p = tmp_path / "bad.npy"
    header = b"{'descr': '<q9', 'fortran_order': False, 'shape': (3,), }"
    header += b" " * (117 - len(header)) + b"\n"
    p.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header
                  + bytes(24))
    assert _load._known_header(p.read_bytes()[:512]) is None
    with pytest.raises(ValueError, match=r"bad\.npy.*descr '<q9' is not a valid dtype"):
        mmarray.load(str(p))


def test_datasets_with_headers_of_different_lengths_alternate_without_calling_back(
        tmp_path, monkeypatch):
    a = [tmp_path / f"a{i}.npy" for i in range(4)]
    b = [tmp_path / f"b{i}.npy" for i in range(4)]
    for i in range(4):
        np.save(a[i], np.arange(8.0) + i)              # a 128-byte header
        np.save(b[i], np.full((1,) * 40, float(i)))   # 40 dimensions: a 256-byte header
    calls = []
    real = _load._known_header
    monkeypatch.setattr(_load, "_known_header", lambda first: calls.append(1) or real(first))
    monkeypatch.setattr(_load, "_prefixes", {})
    monkeypatch.setattr(_load, "_prefix_lengths", ())
    for p in (a[0], b[0], a[0], b[0]):                  # each header known and answered once
        mmarray.load(str(p)).close()
    asked = len(calls)
    for i in range(4):
        with mmarray.load(str(a[i])) as m, mmarray.load(str(b[i])) as n:
            assert m.offset == 128 and m.array.tolist() == (np.arange(8.0) + i).tolist()
            assert n.offset == 256 and n.shape == (1,) * 40 and float(n.array.sum()) == i
    assert len(calls) == asked
    assert sorted(_load._prefix_lengths) == [128, 256]


def test_a_known_prefix_over_a_short_file_takes_the_general_path(tmp_path):
    # Same header bytes, data cut short: the map fails, nothing is left mapped, and the
    # general path says what is wrong.
    good, cut = tmp_path / "good.npy", tmp_path / "cut.npy"
    np.save(good, np.arange(64.0))
    np.save(cut, np.arange(64.0))
    with open(cut, "r+b") as f:
        f.truncate(128 + 8 * 10)
    mmarray.load(str(good)).close()
    mmarray.load(str(good)).close()         # the prefix is in the table now
    with pytest.raises(ValueError, match="data|truncated|bytes"):
        mmarray.load(str(cut))
    st = os.stat(cut)
    assert _engine.live_views(st.st_dev, st.st_ino) == 0


def test_map_by_header_checks_a_known_layout_as_a_called_one(npys):
    p = str(npys[0])
    with open(p, "rb") as f:
        prefix = f.read(128)
    dt = np.dtype("f8")
    bad = {prefix: (128, 100, dt, (512,), "C")}           # nbytes that is not the shape's
    with pytest.raises(ValueError):
        _engine.map_by_header(p, _engine.READ, "r", 512, lambda first: None,
                              mmarray.Mapping, bad, (128,))
    good = {prefix: (128, 8 * 512, dt, (512,), "C")}
    m = _engine.map_by_header(p, _engine.READ, "r", 512, lambda first: 1 / 0,
                              mmarray.Mapping, good, (128,))
    assert m is not None and m.array.tolist() == np.arange(512.0).tolist()
    m.close()
    # A length past what was read, or a prefix not in the table: the callback answers.
    for known, lengths in ((good, (4096,)), ({}, (128,)), (good, (127, 0, -5)), (good, ())):
        assert _engine.map_by_header(p, _engine.READ, "r", 64, lambda first: None,
                                     mmarray.Mapping, known, lengths) is None
    # a later length of the tuple hits
    m = _engine.map_by_header(p, _engine.READ, "r", 512, lambda first: None,
                              mmarray.Mapping, good, (256, 64, 128))
    assert m is not None and m.shape == (512,)
    m.close()
    # offsets and byte counts must be ints (not truncated floats)
    with pytest.raises(TypeError, match="expected ints"):
        _engine.map_by_header(p, _engine.READ, "r", 512, lambda first: None, mmarray.Mapping,
                              {prefix: (128.5, 8 * 512, dt, (512,), "C")}, (128,))
    with pytest.raises(TypeError, match="expected ints"):
        _engine.map_by_header(p, _engine.READ, "r", 512,
                              lambda first: (128, 4096.0, dt, (512,), "C"), mmarray.Mapping)


def test_a_class_with_its_own_new_takes_the_general_path(data, npys):
    # The fast paths make the object with Region's tp_new directly: a class whose __new__
    # is its own (which map_file calls and checks) is not theirs to make.
    class Odd(mmarray.Mapping):
        def __new__(cls, *args):
            return mmarray.Mapping.__new__(mmarray.Mapping)  # not a cls
    p = str(npys[0])
    mmarray.load(p).close()
    assert _engine.map_by_header(p, _engine.READ, "r", 64, _load._known_header, Odd) is None
    utf8 = not POSIX or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"
    try:
        _engine.set_fast_open(_api._FAST_MODES, _api._dtype_cache, Odd, _api._abspath,
                              utf8, POSIX, _api._general_open)
        assert _engine.open_to_end(str(data), "uint8", "r", 0, None, "C", False, None) is None
        with pytest.raises(TypeError, match="must return a new, bare"):
            _engine.map_file(os.fsencode(data), _engine.READ, 0, _engine.TO_END, 0,
                             np.dtype("u1"), None, "C", "r", str(data), Odd)
    finally:
        _api.install_fast_open()
    st = os.stat(data)
    assert _engine.live_views(st.st_dev, st.st_ino) == 0


class _Tuple(tuple):
    pass


class _Int(int):
    def __index__(self):
        return 7


_SHAPES = [(), (0,), (3, 4), (1, 0, 5), (2**62, 2**62, 0), (2**62,), (2**60, 16), (-1,),
           (True,), (np.int64(3),), (2**70,), (2**63 - 1,), (2**63,), _Tuple((2, 3)),
           (_Int(5),), [3], 3, (1,) * 65, (1,) * 64, (3.0,)]


@pytest.mark.parametrize("shape", _SHAPES, ids=repr)
@pytest.mark.parametrize("itemsize", [1, 8])
def test_engine_shape_check_fast_equals_general(shape, itemsize):
    """The engine's shape check without a Python call (_shape_nbytes_c, for an exact tuple
    of exact ints that fits) gives what _shape_nbytes gives, for every shape: the same shape
    and byte count, or the same error (map_file of no file checks the shape, then needs a
    size of 0)."""
    dtype = np.dtype(f"V{itemsize}") if itemsize != 8 else np.dtype(np.float64)
    try:
        want = _engine._shape_nbytes(shape, itemsize)
    except Exception as exc:
        with pytest.raises(type(exc)) as got:
            _engine.map_file(None, _engine.READ, 0, 0, 0, dtype, shape, "C", "r", None)
        assert str(got.value) == str(exc)
        return
    want_shape, want_nbytes = want
    if want_nbytes == 0:
        m = _engine.map_file(None, _engine.READ, 0, 0, 0, dtype, shape, "C", "r", None)
        assert m.shape == want_shape and type(m.shape) is tuple
        assert all(type(d) is int for d in m.shape)
        m.close()
    else:
        with pytest.raises(ValueError) as got:
            _engine.map_file(None, _engine.READ, 0, 0, 0, dtype, shape, "C", "r", None)
        assert str(got.value).startswith(f"shape {want_shape} of dtype {dtype} is "
                                          f"{want_nbytes} bytes, but 0 bytes")


@pytest.mark.skipif(not POSIX, reason="POSIX path spellings")
def test_fast_open_names_the_file_as_os_path_abspath_does_for_every_spelling(tmp_path,
                                                                             monkeypatch):
    (tmp_path / "sub").mkdir()
    (tmp_path / ".hidden").write_bytes(b"\1" * 8)
    (tmp_path / "x.bin").write_bytes(b"\0" * 8)
    monkeypatch.chdir(tmp_path / "sub")
    d = str(tmp_path)
    spellings = [f"{d}/x.bin", f"{d}//x.bin", f"{d}/./x.bin", f"{d}/sub/../x.bin",
                 f"/{d}/x.bin", f"{d}/.hidden", f"{d}/sub/./../.hidden", "../x.bin",
                 "./../x.bin", f"{d}/sub/..//x.bin"]
    for spelling in spellings:
        with mmarray.open(spelling, mode="r") as m:
            assert m.filename == os.path.abspath(spelling), spelling
        mm = mmarray.memmap(spelling, mode="r")
        assert mm.filename == os.path.abspath(spelling), spelling
        mm.close()
        assert _engine.open_to_end(spelling, "uint8", "r", 0, None, "C", False,
                                   None) is not None, spelling  # the fast path took it


def test_the_engines_open_has_the_general_opens_signature_and_defaults():
    # mmarray.open is the engine's open made a built-in function: its own defaults, and the
    # signature its docstring carries, must be the general open's (without annotations).
    import inspect
    import types
    assert type(mmarray.open) is types.BuiltinFunctionType and _api.open is mmarray.open
    assert _engine.open_builtin(b"ignored", "ignored") is mmarray.open   # made once
    engine = inspect.signature(_engine.open)
    front = inspect.signature(mmarray.open)
    general = inspect.signature(_api._general_open)
    plain = [(p.name, p.kind, p.default) for p in general.parameters.values()]
    assert [(p.name, p.kind, p.default) for p in engine.parameters.values()] == plain
    assert [(p.name, p.kind, p.default) for p in front.parameters.values()] == plain
    assert all(p.annotation is p.empty for p in front.parameters.values())
    assert mmarray.open.__doc__ == _api._general_open.__doc__ and ">>>" in mmarray.open.__doc__
    assert (mmarray.open.__module__, mmarray.open.__qualname__) == ("mmarray._api", "open")
    assert pickle.loads(pickle.dumps(mmarray.open)) is mmarray.open


def test_the_builtin_open_takes_every_call_the_engines_open_takes(data):
    # The built-in's calls are the engine's open's: the common ones and the full parse.
    for call in [lambda: mmarray.open(str(data)), lambda: mmarray.open(str(data), "u1", "r"),
                 lambda: mmarray.open(str(data), mode="r", dtype="u1"),
                 lambda: mmarray.open(file=str(data), mode="r"),
                 lambda: mmarray.open(str(data), "u1", "r", 0, None, "C", populate=False,
                                      advise="random")]:
        m = call()
        assert m.shape == (4096,) and bytes(m.array[:4]) == bytes(np.fromfile(data, "u1")[:4])
        m.close()
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        mmarray.open(str(data), nope=1)
    with pytest.raises(TypeError):
        mmarray.open()
    with pytest.raises(TypeError):
        mmarray.open(str(data), "u1", "r", 0, None, "C", False)   # populate is keyword-only


def test_mapping_close_is_a_method_descriptor_with_regions_close(data):
    import inspect
    descriptor = mmarray.Mapping.__dict__["close"]
    assert type(descriptor).__name__ == "method_descriptor"
    assert str(inspect.signature(mmarray.Mapping.close)) == "(self, /, strict=False)"
    assert mmarray.Mapping.close.__doc__.startswith("Close the mapping.")
    m = mmarray.open(str(data), mode="r")
    a = m.array
    with pytest.raises(BufferError, match="1 export"):
        m.close(strict=True)                     # the full path, by keyword
    with pytest.raises(BufferError, match="1 export"):
        m.close(True)                            # and by position
    assert not m.closed
    with pytest.raises(TypeError, match="at most 1 positional argument"):
        m.close(1, 2, 3, 4, 5, 6)               # more than the descriptor's small stack
    with pytest.raises(TypeError, match="unexpected keyword argument 'x'"):
        m.close(False, x=1)
    m.close()
    assert m.closed and m.exports == 1
    del a
    assert m.exports == 0
    m.close()                                    # idempotent
    mmarray.Mapping.close(m, strict=True)        # unbound, closed: nothing to refuse


def test_mapping_close_refuses_an_object_of_another_class():
    with pytest.raises(TypeError, match="doesn't apply to a 'object' object"):
        mmarray.Mapping.close(object())
    with pytest.raises(TypeError, match="doesn't apply"):
        mmarray.Mapping.close(_engine.Region.__new__(_engine.Region))


def test_close_of_a_subclass_of_mapping_takes_the_descriptor(data):
    class Sub(mmarray.Mapping):
        __slots__ = ()
    for cls in (mmarray.Mapping, Sub, mmarray.Mapping, Sub):   # the call site specializes,
        m = mmarray.open(str(data), mode="r")                   # then deopts
        m.__class__ = cls
        m.close()
        assert m.closed and m.nbytes == 4096
        with pytest.raises(ValueError, match="closed"):
            m.array
    with pytest.raises(TypeError, match="expected a class made by a class statement"):
        _engine.set_close_method(_engine.Region, b"close()\n--\n\n")
    with pytest.raises(TypeError, match="expected a class made by a class statement"):
        _engine.set_close_method(int, b"close()\n--\n\n")


def test_set_close_method_on_another_subclass_of_region(data):
    class Other(_engine.Region):
        pass
    _engine.set_close_method(Other, b"close($self, /, strict=False)\n--\n\nOther's close.")
    assert Other.close.__doc__ == "Other's close."
    assert Other.__dict__["close"] is not mmarray.Mapping.__dict__["close"]
    assert mmarray.Mapping.close.__doc__.startswith("Close the mapping.")   # not changed


def test_new_fast_open_tables_are_not_bypassed_by_the_last_lookup(data):
    # open_to_end keeps the last mode and dtype it found: set_fast_open must forget them.
    mmarray.open(str(data), dtype=np.uint8, mode="r").close()   # 'r' and np.uint8 kept
    args = (str(data), np.uint8, "r", 0, None, "C", False, None)
    with fast_open_off():
        assert _engine.open_to_end(*args) is None
        m = mmarray.open(str(data), dtype=np.uint8, mode="r")  # by the general open
        assert m.shape == (4096,) and m.mode == "r"
        m.close()
    m = _engine.open_to_end(*args)
    assert type(m) is mmarray.Mapping and m.dtype == np.uint8
    m.close()



def test_open_argument_errors_name_open():
    with pytest.raises(TypeError, match=r"^open\(\) takes at least 1 positional argument"):
        mmarray.open()
    with pytest.raises(TypeError, match=r"^open\(\) got an unexpected keyword argument 'nope'"):
        mmarray.open("x", nope=1)


def test_a_general_open_that_calls_the_engines_open_again_is_refused_or_a_recursion_error(
        data):
    # Helper-67: set_fast_open(..., general=mmarray.open) made every call the fast path
    # declines recurse in C until the stack overflowed (SIGSEGV).
    utf8 = not POSIX or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"
    with pytest.raises(TypeError, match="other than the engine's open"):
        _engine.set_fast_open(_api._FAST_MODES, _api._dtype_cache, mmarray.Mapping,
                              _api._abspath, utf8, POSIX, mmarray.open)
    proc = run_python(f"""
        import functools, os, sys
        import mmarray
        from mmarray import _api, _engine
        _engine.set_fast_open(_api._FAST_MODES, _api._dtype_cache, mmarray.Mapping,
                              _api._abspath, {utf8}, {POSIX}, functools.partial(mmarray.open))
        for call in (lambda: mmarray.open({str(data)!r}, "u1", "r", 16),  # the full parse
                     lambda: mmarray.open({str(data)!r} + ".missing", mode="r")):  # the short
            try:
                call()
            except RecursionError:
                print("RecursionError")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["RecursionError"] * 2, proc.stdout


class _Recorder:
    """A general open that records how it was called, then opens as the real one does."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return _api._general_open(*args, **kwargs)


@pytest.fixture
def recorded():
    """The general open recorded, with the fast path's tables emptied: every call goes on to
    the general open, by the short way (three arguments) or the full parse (all eight)."""
    recorder = _Recorder()
    _engine.set_fast_open({}, {}, mmarray.Mapping, _api._abspath, False, POSIX, recorder)
    try:
        yield recorder
    finally:
        _api.install_fast_open()


@pytest.mark.parametrize("args, kwargs, expected", [
    ((), {}, ("uint8", "r+")),
    (("u1",), {}, ("u1", "r+")),
    (("u1", "r"), {}, ("u1", "r")),
    ((), {"mode": "r"}, ("uint8", "r")),
    ((), {"dtype": "i2"}, ("i2", "r+")),
    (("u1",), {"mode": "c"}, ("u1", "c")),
    ((), {"mode": "r", "dtype": "u1"}, ("u1", "r")),
])
def test_the_common_calls_of_open_skip_its_argument_parsing(data, recorded, args, kwargs,
                                                              expected):
    # mm_open_vectorcall: file, dtype and mode, by position or keyword, reach the general open
    # as three positionals, the defaults being open's own.
    m = mmarray.open(str(data), *args, **kwargs)
    assert recorded.calls == [((str(data),) + expected, {})]
    assert (m.dtype, m.mode) == (np.dtype(expected[0]), _api._MODE_SPEC[expected[1]][0])
    m.close()


@pytest.mark.parametrize("args, kwargs", [
    (("u1", "r", 0), {}),
    ((), {"offset": 0}),
    (("u1",), {"order": "C"}),
    ((), {"populate": False}),
    ((), {"dtype": "u1", "mode": "r", "advise": None}),
    ((), {"".join(["mo", "de"]): "r"}),          # a keyword name that is not interned
])
def test_other_calls_of_open_take_the_full_parse(data, recorded, args, kwargs):
    m = mmarray.open(str(data), *args, **kwargs)
    assert len(recorded.calls) == 1
    given, keywords = recorded.calls[0]
    assert len(given) == 6 and sorted(keywords) == ["advise", "populate"]
    m.close()


def test_open_called_without_its_file_or_twice_with_one_argument_raises_as_python_would(data):
    m = mmarray.open(file=str(data), mode="r")   # by keyword: the full parse takes it
    assert m.mode == "r"
    m.close()
    with pytest.raises(TypeError, match="multiple values for keyword argument 'dtype'"):
        mmarray.open(str(data), "u1", dtype="u1")
    with pytest.raises(TypeError, match="multiple values for keyword argument 'mode'"):
        mmarray.open(str(data), "u1", "r", mode="r")
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        mmarray.open(str(data), mode="r", nope=1)
    with pytest.raises(TypeError, match="positional argument"):
        mmarray.open(mode="r")


@pytest.mark.parametrize("where", ["__eq__", "__hash__"])
def test_tables_replaced_while_a_dtype_is_looked_up_are_neither_freed_nor_cached(data, where):
    # Helper-67: a dtype argument (or a key it collides with) running set_fast_open during
    # the lookup freed the table being read (use after free, SIGSEGV at times), and the value
    # found in the old table was then kept as the last lookup, taken after the tables were
    # emptied.
    proc = run_python(f"""
        import os
        import numpy as np
        import mmarray
        from mmarray import _api, _engine

        def install(dtypes):
            _engine.set_fast_open(dict(_api._FAST_MODES), dtypes, mmarray.Mapping,
                                  _api._abspath, True, {POSIX}, _api._general_open)

        class Key:
            armed = False
            def __hash__(self):
                if {where!r} == "__hash__" and Key.armed:
                    Key.armed = False
                    install({{}})
                    junk = [{{i: np.dtype("u1") for i in range(8)}} for _ in range(200)]
                return hash("f4")
            def __eq__(self, other):
                if {where!r} == "__eq__" and Key.armed:
                    Key.armed = False
                    install({{}})  # (the table read stays alive: kept below)
                return False

        path = {str(data)!r}
        kept = []
        for i in range(200):
            key = Key()
            table = {{key: np.dtype("u1"), "f4": np.dtype("f4"),
                      **{{j: np.dtype("u1") for j in range(50)}}}}
            if {where!r} == "__eq__":
                kept.append(table)
            install(table)
            del table
            Key.armed = True
            arg = key if {where!r} == "__hash__" else "f4"
            m = _engine.open_to_end(path, arg, "r", 0, None, "C", False, None)
            if m is not None:
                m.close()
            # the tables are empty now: nothing is taken, "f4" included
            assert _engine.open_to_end(path, "f4", "r", 0, None, "C", False, None) is None
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok", proc.stdout


def test_tables_replaced_by_a_finalizer_while_the_last_lookup_is_kept_are_not_bypassed(data):
    # Helper-68: the check that the table was still installed came before the tuple kept as
    # the last lookup was made; the garbage collector, run by that allocation, could install
    # other tables in between (a gc callback here), and the old table's value was kept.
    proc = run_python(f"""
        import gc
        import numpy as np
        import mmarray
        from mmarray import _api, _engine

        def install(dtypes):
            _engine.set_fast_open(dict(_api._FAST_MODES), dtypes, mmarray.Mapping,
                                  _api._abspath, True, {POSIX}, _api._general_open)
        B = {{"f4": np.dtype("i2")}}
        armed, live, hold = [False], [False], []
        def callback(phase, info):
            if phase == "start" and armed[0]:
                armed[0] = False
                install(B)
        gc.callbacks.append(callback)

        class K:  # collides with "f4", probed before it
            def __hash__(self):
                return hash("f4")
            def __eq__(self, other):
                if live[0]:
                    live[0] = False
                    hold.clear()
                    gc.collect()
                    gc.disable()
                    hold.extend([(i, None) for i in range(2500)])  # no free 2-tuples left
                    gc.enable()
                    armed[0] = True
                return False

        path = {str(data)!r}
        for trial in range(50):
            install({{K(): np.dtype("u1"), "f4": np.dtype("f4")}})
            gc.set_threshold(1, 10, 10)
            live[0] = True
            m = _engine.open_to_end(path, "f4", "r", 0, None, "C", False, None)
            gc.set_threshold(700, 10, 10)
            armed[0] = False
            if m is not None:
                m.close()
            m = _engine.open_to_end(path, "f4", "r", 0, None, "C", False, None)
            assert m is None or m.dtype == np.dtype("i2"), (trial, m.dtype)
            if m is not None:
                m.close()
        print("ok")
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.strip() == "ok", proc.stdout


def test_a_resize_while_the_shape_tuple_is_made_is_not_undone():
    # Helper-71: making the 1-D shape tuple of a fast open can run the collector, whose gc
    # callback (or a finalizer) resized the mapping; the old length was then stored over the
    # new shape, and the array read past the shrunk view (SIGSEGV).
    proc = run_python("""
        import gc, os, tempfile
        import mmarray
        path = os.path.join(tempfile.mkdtemp(), "big.bin")
        with open(path, "wb") as f:
            f.truncate(64 << 20)
        box = {"armed": False}
        def callback(phase, info):
            if box["armed"] and phase == "start":
                box["armed"] = False
                box["m"].resize(4096)
                box["hits"] = box.get("hits", 0) + 1
        gc.callbacks.append(callback)
        for k in range(60):
            m = box["m"] = mmarray.open(path, "u1", "r+")   # the shape kept as a length
            gc.collect()
            gc.set_threshold(10**6, 10, 10)
            keep = [(i,) for i in range(3000 + k)]          # empty the 1-tuple free list
            gc.set_threshold(gc.get_count()[0] + k % 6, 10, 10)
            box["armed"] = True
            shape = m.shape
            box["armed"] = False
            gc.set_threshold(10**6, 10, 10)
            del keep
            assert m.shape == (m._mapped_length(),), (shape, m._mapped_length())
            assert len(m.array) == m._mapped_length()
            m.close()
        os.unlink(path)
        print("hits", box.get("hits", 0))
    """, timeout=240)
    assert_clean_exit(proc)
    assert proc.stdout.startswith("hits"), proc.stdout


def test_array_exports_are_not_tracked_and_are_freed_with_a_cycle_that_holds_them(data):
    import gc
    m = mmarray.open(str(data), mode="r")
    export = m.array.base
    assert type(export) is _engine._ArrayExport and not gc.is_tracked(export)
    cycle = [export, memoryview(export)]
    cycle.append(cycle)
    del export
    assert m.exports == 1                        # the export (its memoryview holds it)
    del cycle
    gc.collect()
    assert m.exports == 0
    m.close()
    assert m.closed


def test_the_array_of_a_fast_open_is_a_1d_array_of_the_mapping(data):
    for mode, writable in (("r", False), ("r+", True), ("c", True)):
        m = mmarray.open(str(data), dtype="<u4", mode=mode)
        a = m.array
        assert type(a) is np.ndarray and a.shape == (1024,) and a.dtype == np.dtype("<u4")
        assert a.flags.writeable is writable and a.flags.c_contiguous
        assert a.ctypes.data == np.asarray(m).ctypes.data
        assert np.array_equal(a, np.fromfile(data, "<u4"))
        assert m.exports == 1
        m.close()
        assert m.exports == 1 and a[0] == np.fromfile(data, "<u4")[0]   # still mapped
        del a
        assert m.exports == 0


class _Unaskable:
    """A strict argument whose truth value must not be asked."""

    def __bool__(self):
        raise ZeroDivisionError("strict was asked")


def test_close_of_a_closed_mapping_does_not_look_at_strict(data):
    # Helper-73 (Mapping.close), helper-74 (mmarray.memmap.close): close(strict=...) took
    # strict's truth value before seeing the mapping closed.
    m = mmarray.open(str(data), mode="r")
    m.close()
    assert m.close(strict=_Unaskable()) is None
    assert _engine.Region.close(m, _Unaskable()) is None
    mm = mmarray.memmap(str(data), mode="r")
    mm.close()
    assert mm.close(strict=_Unaskable()) is None and mm.closed
