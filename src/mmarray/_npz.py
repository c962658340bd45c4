"""Mapped ``.npz`` archives: `NpzMapping`, each stored member mapped in place inside the
archive, compressed members decompressed into memory (`InMemoryMember`).

The zip directory is read by ``_zipdir``; members opened with mode 'r+' keep their CRC-32
valid through ``_npzcrc``; ``_npzwrite`` writes archives (`save_npz`).
"""
from __future__ import annotations

import collections.abc
import contextlib
import os
import threading
import zlib

import numpy as np

from mmarray import _api, _engine, _npzcrc, _ranges, _zipdir
from mmarray import _npyformat as _fmt
from mmarray._mapping import ArrayLike, Mapping
from mmarray._warn import warn_at_caller

__all__ = ["NpzMapping", "InMemoryMember", "CompressedMemberWarning"]


class CompressedMemberWarning(UserWarning):
    """An ``.npz`` archive has compressed members, which cannot be memory-mapped.

    :func:`mmarray.load` emits it once per archive; such members are decompressed into
    memory when accessed (see :class:`InMemoryMember`). Pass ``compressed='error'`` to
    refuse such archives, or ``compressed='ignore'`` to silence this.
    """


def load_npz(fd, first, target, filename, name, mode, access, compressed, max_header_size):
    """Open an archive (called by `mmarray.load` with the file's first bytes read)."""
    st = os.fstat(fd)
    if access == _engine.WRITE and filename is None:
        _npzcrc.refuse_append(target, fd, name)
    first = first if filename is not None else b""  # a file object's bytes start at tell()
    entries, cd_start, cd = _zipdir.read_directory(fd, first, st.st_size, name)
    by_key = {}
    for e in entries:
        if e.key in by_key:
            raise ValueError(f"{name}: two members are both named {e.key!r} (as np.load names "
                             f"them: {by_key[e.key].name!r} and {e.name!r})")
        by_key[e.key] = e
    packed = [e.key for e in entries if e.method != _zipdir.STORED]
    if packed and compressed != "ignore":
        methods = sorted({_zipdir.METHOD_NAMES.get(e.method, f"method {e.method}")
                          for e in entries if e.method != _zipdir.STORED})
        shown = ", ".join(repr(k) for k in packed[:5]) + (", ..." if len(packed) > 5 else "")
        msg = (f"{len(packed)} of {len(entries)} members of {name} are compressed "
               f"({'/'.join(methods)}): {shown}; compressed members cannot be memory-mapped")
        if compressed == "error":
            raise ValueError(f"{msg} (compressed='error'); write the archive with np.savez or "
                             f"mmarray.save_npz to map every member")
        warn_at_caller(f"{msg}, so they are decompressed into memory when accessed. Write the "
                       f"archive with np.savez or mmarray.save_npz to map them; pass "
                       f"compressed='error' to refuse or 'ignore' to silence this.",
                       CompressedMemberWarning)
    npz = NpzMapping.__new__(NpzMapping)
    npz._entries = by_key
    npz._members = {}
    # Orders member opens and close(): every member opened before close() takes the lock is
    # closed by it; one asked for after gets ValueError.
    npz._lock = threading.RLock()
    npz._lock_forks = _forks  # made anew in a forked child (see _lock_of)
    # key -> _npzcrc._Crc, one per member for the archive's life (reopens share it)
    npz._crcs = {}
    npz._closed = False
    npz._target = target if filename is None else filename
    # r+ by path: the descriptor the members' CRC-32 rewrites go through (see _npzcrc.Held)
    npz._held = _npzcrc.Held(fd, filename) if access == _engine.WRITE and filename is not None \
        else None
    npz._filename = filename
    npz._name = name
    npz._mode = mode
    npz._access = access
    npz._prefix = first
    # r+ keeps the directory as loaded: the bytes that prove a member's CRC-32 positions are
    # still its own before anything is written there (see _npzcrc).
    npz._cd = (cd_start, cd) if access == _engine.WRITE else None
    npz._id = (st.st_dev, st.st_ino)
    npz._max_header_size = max_header_size
    return npz


_forks = 0  # forks this process is the child of (of a process that imported this module)
_renew_guard = threading.Lock()


def _after_fork_in_child():
    global _forks, _renew_guard
    _forks += 1
    _renew_guard = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _lock_of(npz):
    """``npz``'s lock, made anew on first use in a forked child: one a parent thread held at
    the fork would never be released there (the next member access or close() would hang)."""
    if npz._lock_forks != _forks:
        with _renew_guard:
            if npz._lock_forks != _forks:
                npz._lock = threading.RLock()
                npz._lock_forks = _forks
    return npz._lock


class NpzMapping(collections.abc.Mapping):
    """The members of a ``.npz`` archive, each mapped in place: ``name -> Mapping``.

    Returned by :func:`mmarray.load` for a zip archive; do not construct directly. A
    read-only :class:`collections.abc.Mapping`: ``keys()``, ``npz[name]``, ``name in npz``,
    ``len(npz)``, iteration, plus :meth:`close` and use as a context manager. Names are what
    ``np.load`` gives (the member's file name without its ``.npy`` suffix; ``npz['a.npy']``
    works too).

    A member is opened on first access and the same object is returned until it is closed.
    Opening it reads its local header and ``.npy`` header from the file: ValueError if they
    differ from the bytes :func:`mmarray.load` read there (the archive was rewritten in place).
    An uncompressed (stored) member is a :class:`~mmarray.Mapping` of its data inside the
    archive: no copy, no temporary file; its :attr:`~mmarray.Mapping.offset` is where the
    array starts in the archive. A member that is not a ``.npy`` is mapped as its raw bytes
    (``uint8``, as ``np.load`` returns them as ``bytes``). A compressed member is decompressed
    into memory and is an :class:`InMemoryMember`.

    In mode ``'r+'``, writes through a member change the archive, and the member's
    :meth:`~mmarray.Mapping.flush` and :meth:`~mmarray.Mapping.close` (so also :meth:`close`
    here) recompute its CRC-32 over its stored bytes (reading them once) and rewrite it in
    the local header, the central directory and the data descriptor if any, wherever the
    value there differs, so ``zipfile`` and ``np.load`` keep accepting the archive. If arrays
    of a closed member are still alive, the CRC is computed again once the last of them is
    gone, and at interpreter exit for members never closed. A rewrite first checks that the
    file still holds the member where it was loaded (its local header, directory entry and
    data descriptor, and the file's length); if the archive was rewritten or truncated in
    place since, nothing is written and a :class:`RuntimeWarning` names the member.
    Several handles in one process update a member's CRC-32 one at a time (the last to flush
    or close computes last); across processes that is not guaranteed.

    Mode ``'r+'`` reads each member once, when it is first opened, to verify its CRC-32
    against what the archive stores now: a member whose CRC-32 does not match its data
    (corrupt, or written without its CRC-32 being updated, for example by a process that
    crashed before :meth:`~mmarray.Mapping.flush`) raises ValueError rather than getting a
    fresh CRC-32 that would make it look valid; mode ``'r'`` still maps it. Modes ``'r'``
    and ``'c'`` do not check the CRC-32 of stored members (that would read all of their
    data).

    The archive holds no file descriptor between accesses: a member access reopens the file
    by name (or uses the file object given to :func:`mmarray.load`, which must stay open).
    In mode ``'r+'`` by name it holds one, opened for writing when it is loaded, for as long
    as a member's CRC-32 may need rewriting (until its last member and their arrays are
    gone): the rewrite goes to the file written, even if the archive is renamed or made
    read-only meanwhile. Members opened later still go by the name.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npz")
    >>> np.savez(path, x=np.arange(4), y=np.ones((2, 2)))
    >>> with mmarray.load(path) as npz:
    ...     sorted(npz), npz["x"].array.tolist(), npz["y"].shape
    (['x', 'y'], [0, 1, 2, 3], (2, 2))
    >>> with mmarray.load(path, mode="r+") as npz:
    ...     npz["x"].array[0] = 10          # lands in the archive; the CRC-32 is fixed on close
    >>> np.load(path)["x"].tolist()
    [10, 1, 2, 3]
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("NpzMapping is not constructed directly; use mmarray.load(path)")

    # -- collections.abc.Mapping -------------------------------------------------------------

    def __getitem__(self, key):
        # A member's own name first, then its name without '.npy', as np.load looks them up
        # (np.savez(a=..., **{"a.npy": ...}): 'a.npy' is the member named a.npy, that is a).
        e = self._suffixed(key) if type(key) is str and key[-4:] == ".npy" else None
        if e is None:
            e = self._entries.get(key)
            if e is None:
                raise KeyError(f"{key!r} is not a member of {self._name}; members: "
                               f"{list(self._entries)!r}")
        if self._closed:
            raise ValueError(f"archive {self._name} is closed")
        m = self._members.get(e.key)  # no lock: a close() from now on closes it
        if m is not None and not m.closed:
            return m
        # Opened without the lock (an 'r+' open reads the whole member), then stored with it:
        # a close() that took the members meanwhile has this one closed here instead.
        m = self._open(e)
        with _lock_of(self):
            other = self._members.get(e.key) if not self._closed else None
            if other is None or other.closed:
                if not self._closed:
                    self._members[e.key] = m
                    return m
                other = None
        m.close()  # the archive was closed meanwhile, or another thread opened it first
        if other is None:
            raise ValueError(f"archive {self._name} is closed")
        return other

    def _suffixed(self, key):
        if isinstance(key, str) and key.endswith(".npy"):
            e = self._entries.get(key[:-4])
            if e is not None and e.name == key:
                return e
        return None

    def __contains__(self, key):
        try:
            return key in self._entries or self._suffixed(key) is not None
        except TypeError:  # unhashable
            return False

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    # -- lifetime ------------------------------------------------------------------------------

    def close(self):
        """Close every member opened so far (each with :meth:`Mapping.close`'s rules).

        Members whose arrays are alive stay mapped until those arrays go; for ``'r+'`` their
        CRC-32 is rewritten now (and again when they are finally released). Idempotent; after
        it, ``npz[name]`` raises ValueError. If closing members raises, the others are still
        closed and the first error is raised.
        """
        with _lock_of(self):  # waits for a member being opened: it is closed below
            if self._closed:
                return
            self._closed = True
            members, self._members = self._members, {}
            # No member opens again: the CRC-32 records (and the descriptor they write
            # through) stay with the members that still need them, and go with those.
            self._crcs, self._held = {}, None
        error = None
        for m in members.values():
            try:
                m.close()
            except Exception as exc:  # close the others, report the first
                if error is None:
                    error = exc
        if error is not None:
            raise error

    @property
    def closed(self):
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def mode(self):
        """The mode every member is mapped with: ``'r'``, ``'r+'`` or ``'c'``."""
        return self._mode

    @property
    def filename(self):
        """Absolute path of the archive, or None if it was given as a file object."""
        return self._filename

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (f"<mmarray.NpzMapping {state} mode={self._mode!r} file={self._name} "
                f"members={list(self._entries)!r}>")

    def __reduce__(self):
        raise TypeError("cannot pickle an NpzMapping; reopen the archive by name")

    # -- members -------------------------------------------------------------------------------

    def _fd(self, label):
        """(fd, owned): the archive reopened by name, or the file object's descriptor.

        ValueError if the file at that path is no longer the one loaded (replaced since, for
        example by `save_npz` to the same path, which renames a new file over it): the
        directory read at load time does not describe it.
        """
        flags = _fmt.O_WRITE if self._access == _engine.WRITE else _fmt.O_READ
        return _npzcrc.reopen(self._target, self._id, flags, label,
                              "reload it with mmarray.load")

    def _read(self, fd, pos, n):
        prefix = self._prefix
        if pos + n <= len(prefix):
            return prefix[pos:pos + n]
        return _fmt.read_at(fd, pos, n)

    def _unchanged(self, pos, got, label, what, skip=(0, 0)):
        """ValueError if ``got``, read from the file at ``pos`` now, is not what `load` read
        there (when its first read reached that far), but for the bytes ``skip[0]:skip[1]``
        of it (a CRC-32 that mode 'r+' rewrites)."""
        old = self._prefix[pos:pos + len(got)]
        new = got[:len(old)]
        a, b = skip
        if old[:a] != new[:a] or old[b:] != new[b:]:
            raise ValueError(f"{label}: the archive was rewritten in place since it was "
                             f"loaded (the {what} at offset {pos} is not the one read then); "
                             f"reload it with mmarray.load")

    def _open(self, e):
        label = f"{self._name} member {e.key!r}"
        if e.flags & _zipdir.FLAG_ENCRYPTED:
            raise ValueError(f"{label} is encrypted; mmarray cannot read encrypted members")
        fd, owned = self._fd(label)
        try:
            # The member's local header and .npy header are read from the file now, in one
            # read, not taken from the bytes `load` read: the archive may have been rewritten
            # in place since (then they must not differ from those, see `_unchanged`).
            n = 30 + len(e.raw)
            block = _fmt.read_at(fd, e.lho, max(0, min(e.limit - e.lho, n + _fmt.FIRST_READ)))
            stored = e.method == _zipdir.STORED
            self._unchanged(e.lho, block[:n], label, "local header",
                            (14, 18) if stored else (0, 0))
            data, head = _zipdir.local_header(lambda pos, k: block[pos - e.lho:pos - e.lho + k],
                                              e, label)
            if not stored:
                return self._inflate(fd, owned, e, data, label)
            return self._map(fd, block[data - e.lho:], e, data, head, label,
                             block[:data - e.lho])
        finally:
            if owned:
                os.close(fd)

    def _map(self, fd, first, e, data, head, label, local):
        """Map the stored member ``e``; ``first``: the file's bytes from ``data`` on, if any;
        ``local``: from its local header to ``data``, as far as they were read."""
        mode, access = self._mode, self._access
        if len(first) < min(e.csize, 256):
            first = _fmt.read_at(fd, data, min(e.csize, 1024))
        first = first[:e.csize]
        if first[:6] == _fmt.MAGIC:
            hlen, dt, shape, order, nbytes = _fmt.parse_header(
                first, lambda pos, n: _fmt.read_at(fd, data + pos, min(n, e.csize - pos)),
                e.csize, label, self._max_header_size)
            if hlen + nbytes > e.csize:
                raise ValueError(f"{label}: the header says {_api._short_repr(shape)} x {dt} = "
                                 f"{nbytes} bytes of data, but the member holds only "
                                 f"{e.csize - hlen} after its {hlen}-byte header")
        else:  # not a .npy: its raw bytes, as np.load returns them
            hlen, dt, shape, order, nbytes = 0, _U8, (e.csize,), "C", e.csize
        header = first[:hlen] if len(first) >= hlen else _fmt.read_at(fd, data, hlen)
        # The .npy header, or the magic string if the member was a .npy when loaded (not the
        # data of a raw member: mode 'r+' may have rewritten that since).
        if hlen or self._prefix[data:data + 6] == _fmt.MAGIC:
            self._unchanged(data, header or first[:6], label, ".npy header")
        offset = data + hlen
        cls = Mapping if access != _engine.WRITE else _npzcrc.NpzMember
        if cls is _npzcrc.NpzMember:
            crc = self._crcs.get(e.key)
            if crc is None:  # first r+ open: the CRC-32 is checked (the member read once)
                crc = _npzcrc.new_crc(self._held or self._target, self._id, self._cd,
                                      lambda pos, n: self._read(fd, pos, n), fd, e, data,
                                      head, header, offset, nbytes, label)
                self._crcs[e.key] = crc
            else:
                crc.check(fd)
        m = _fmt.map_region(fd, access, offset, nbytes, dt, shape, order, mode, self._filename,
                            cls)
        # What a reference re-checks: the local header (but its CRC-32, which mode 'r+'
        # rewrites) and the .npy header, up to the data. Read now, from the descriptor just
        # mapped, for the first pickle to send (read at pickle time, it would be whatever
        # the archive holds then: rewritten in place, another member's headers). An 'r+'
        # member is not pickled.
        m._format = ((e.lho, e.lho + 14), (e.lho + 18, offset))
        if cls is not _npzcrc.NpzMember and nbytes:
            if len(local) != data - e.lho:  # a long extra field: not all in the first read
                local = _fmt.read_at(fd, e.lho, data - e.lho)
            raw = local + header
            if len(raw) == offset - e.lho:
                m._layout_read = (m._format, ((e.lho, raw[:14]), (e.lho + 18, raw[18:])))
        if cls is _npzcrc.NpzMember:
            _npzcrc.track(m, crc)
        return m

    def _inflate(self, fd, owned, e, data, label):
        raw = _fmt.read_at(fd, data, e.csize)
        if len(raw) != e.csize:
            raise ValueError(f"{label}: its data runs past the end of the file")
        self._unchanged(data, raw, label, "compressed data")
        if e.method == _zipdir.DEFLATED:
            d = zlib.decompressobj(-15)
            try:
                out = d.decompress(raw, e.usize + 1)
            except zlib.error as exc:
                raise ValueError(f"{label}: corrupt deflate data ({exc})") from exc
            if not d.eof and len(out) <= e.usize:
                raise ValueError(f"{label}: the deflate stream is truncated or corrupt (it "
                                 f"does not end after {len(out)} bytes of output)")
            if len(out) != e.usize:
                raise ValueError(f"{label}: decompresses to {len(out)}"
                                 f"{'+' if len(out) > e.usize else ''} bytes, the directory "
                                 f"says {e.usize}")
        else:
            out = self._zipfile_read(fd if owned else None, e, label)
        if zlib.crc32(out) != e.crc:
            raise ValueError(f"{label}: Bad CRC-32 ({zlib.crc32(out):#010x}, the directory "
                             f"says {e.crc:#010x})")
        if out[:6] == _fmt.MAGIC:
            hlen, dt, shape, order, nbytes = _fmt.parse_header(
                out, lambda pos, n: out[pos:pos + n], len(out), label, self._max_header_size)
            if hlen + nbytes > len(out):
                raise ValueError(f"{label}: the header says {_api._short_repr(shape)} x {dt} = "
                                 f"{nbytes} bytes of data, but the member holds only "
                                 f"{len(out) - hlen}")
            arr = np.ndarray(shape, dt, out, hlen, None, order)
        else:
            arr, order = np.frombuffer(out, _U8), "C"
        if self._mode == "c":
            arr = arr.copy(order="K")
        return InMemoryMember._new(arr, order, self._mode, self._filename, e.key)

    def _zipfile_read(self, fd, e, label):
        """Methods other than deflate (bzip2, lzma): zipfile knows them.

        ``fd`` is the archive reopened (and checked) by `_fd`, or None for a file object.
        """
        import zipfile  # rare path: keep it off the import time of mmarray

        method = _zipdir.METHOD_NAMES.get(e.method, f"method {e.method}")
        try:
            with (open(fd, "rb", closefd=False) if fd is not None else
                  contextlib.nullcontext(self._target)) as fp, zipfile.ZipFile(fp) as zf:
                return zf.read(e.name)
        except OSError as exc:
            if exc.errno is not None:
                raise  # the operating system's: it names the file
            # bz2's "Invalid data stream" (np.load raises that OSError too): say where
            raise OSError(f"{label}: cannot decompress ({method}): {exc}") from exc
        except Exception as exc:  # BadZipFile, NotImplementedError, lzma.LZMAError, ...
            raise ValueError(f"{label}: cannot decompress ({method}): "
                             f"{type(exc).__name__}: {exc}") from exc


_U8 = np.dtype(np.uint8)


# -- compressed members -----------------------------------------------------------------------

class InMemoryMember(ArrayLike):
    """A compressed ``.npz`` member, decompressed into memory, with a Mapping's interface.

    What :class:`NpzMapping` gives for members it cannot map. :attr:`array` returns a new
    :class:`numpy.ndarray` view of the decompressed data on each access, like
    :attr:`Mapping.array`; the data is ordinary memory, so arrays handed out stay valid
    after :meth:`close`. Mode ``'r'`` and ``'r+'`` arrays are read-only (writes could not
    reach the compressed archive); mode ``'c'`` arrays are writable and share one private
    copy. :meth:`flush` does nothing, :attr:`offset` is None, :attr:`exports` is always 0
    and :meth:`close` never raises :class:`BufferError`.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os, warnings
    >>> path = os.path.join(tempfile.mkdtemp(), "z.npz")
    >>> np.savez_compressed(path, a=np.arange(3))
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     npz = mmarray.load(path)
    >>> caught[0].category.__name__
    'CompressedMemberWarning'
    >>> m = npz["a"]
    >>> type(m).__name__, m.array.tolist(), m.array.flags.writeable
    ('InMemoryMember', [0, 1, 2], False)
    >>> npz.close()
    """
    __slots__ = ("_data", "_closed", "_mode", "_filename", "_order", "_shape", "_dtype",
                 "name")

    def __init__(self, *args, **kwargs):
        raise TypeError("InMemoryMember is not constructed directly; use mmarray.load")

    @classmethod
    def _new(cls, data, order, mode, filename, name):
        self = object.__new__(cls)
        if mode != "c":
            data.flags.writeable = False
        self._data, self._order, self._mode = data, order, mode
        self._shape, self._dtype = data.shape, data.dtype
        self._filename, self.name, self._closed = filename, name, False
        return self

    @property
    def array(self):
        """A new :class:`numpy.ndarray` over the decompressed data (ValueError once closed)."""
        if self._closed:
            raise ValueError("mapping is closed")
        return self._data.view()

    def __setitem__(self, key, value):
        """``member[key] = value``: mode ``'c'`` writes into its private copy; the other
        modes are read-only (ValueError, as numpy says it)."""
        self.array[key] = value

    def close(self, strict=False):
        """Forget the data (arrays handed out keep it alive). Idempotent."""
        self._closed = True
        self._data = None

    def flush(self, start=None, stop=None, sync=True):
        """Nothing to write back (ValueError once closed)."""
        if self._closed:
            raise ValueError("mapping is closed")

    def advise(self, advice, start=None, stop=None):
        """Nothing to advise: the data is ordinary memory (the advice name is checked)."""
        _ranges.advice_code(advice)
        if self._closed:
            raise ValueError("mapping is closed")

    def resident(self, start=None, stop=None):
        """1.0: the data is in memory."""
        if self._closed:
            raise ValueError("mapping is closed")
        return 1.0

    closed = property(lambda self: self._closed, doc="True once :meth:`close` was called.")
    exports = property(lambda self: 0, doc="Always 0: nothing is mapped.")
    dtype = property(lambda self: self._dtype, doc="The array's dtype.")
    shape = property(lambda self: self._shape, doc="The array's shape.")
    mode = property(lambda self: self._mode, doc="The mode the archive was loaded with.")
    order = property(lambda self: self._order, doc="``'C'`` or ``'F'``, from the header.")
    offset = property(lambda self: None, doc="None: the data is not in the file as is.")
    filename = property(lambda self: self._filename, doc="Absolute path of the archive.")
    compressed = property(lambda self: True, doc="True: decompressed, not mapped.")

    @property
    def size(self):
        """Number of elements."""
        n = 1
        for d in self._shape:
            n *= d
        return n

    @property
    def nbytes(self):
        """Size of the array in bytes."""
        return self.size * self.dtype.itemsize

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
        return False

    def __repr__(self):
        state = "closed" if self._closed else "open"
        return (f"<mmarray.InMemoryMember {state} mode={self._mode!r} name={self.name!r} "
                f"dtype={self.dtype} file={self._filename!r}>")
