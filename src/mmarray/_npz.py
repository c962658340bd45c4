"""Mapped ``.npz`` archives: members mapped in place, CRC-32 kept valid, aligned writing.

The zip structures are parsed here from the central directory (end record, ZIP64 locator and
end record, directory entries, local headers), not through :mod:`zipfile`, for two reasons:
``zipfile`` hides where a member's data starts, and reading the directory directly is what
makes opening a member cost about what opening a ``.npy`` does. ``zipfile`` stays the
reference in the tests.

Layout facts used below (APPNOTE.TXT, section 4.3):

* end of central directory record (22 bytes + comment), found from the end of the file;
* ZIP64 end record locator (20 bytes) right before it, pointing at the ZIP64 end record
  (56 bytes + extensible data), which then holds the 64-bit directory size/offset/count;
* central directory entries (46 bytes + name + extra + comment); sizes and the local header
  offset that do not fit 32 bits are 0xFFFFFFFF and come from the ZIP64 extra field (id 1);
* local file header (30 bytes + name + extra); the member's stored bytes start right after
  it, so data offset = local header offset + 30 + name length + extra length of the *local*
  header (which may differ from the directory's extra);
* with general-purpose flag bit 3 a data descriptor (optional signature, CRC-32, sizes)
  follows the data.
"""
from __future__ import annotations

import collections.abc
import contextlib
import operator
import os
import struct
import sys
import threading
import warnings
import weakref
import zlib

import numpy as np
from numpy.lib import format as _format

from mmarray import _api, _engine, _ranges
from mmarray import _npyformat as _fmt
from mmarray._engine import Mapping

__all__ = ["NpzMapping", "InMemoryMember", "CompressedMemberWarning", "save_npz"]


class CompressedMemberWarning(UserWarning):
    """An ``.npz`` archive has compressed members, which cannot be memory-mapped.

    :func:`mmarray.load` emits it once per archive; such members are decompressed into
    memory when accessed (see :class:`InMemoryMember`). Pass ``compressed='error'`` to
    refuse such archives, or ``compressed='ignore'`` to silence this.
    """


_EOCD = struct.Struct("<4s4H2LH")            # end of central directory record
_LOC64 = struct.Struct("<4sLQL")             # ZIP64 end of central directory locator
_EOCD64 = struct.Struct("<4sQ2H2L4Q")        # ZIP64 end of central directory record
_CDIR = struct.Struct("<4s6H3L5H2L")         # central directory file header
_LOCAL = struct.Struct("<4s5H3L2H")          # local file header
_U16 = struct.Struct("<H")
_U16X2 = struct.Struct("<HH")
_SIG_EOCD, _SIG_LOC64, _SIG_EOCD64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
_SIG_CDIR, _SIG_LOCAL, _SIG_DD = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
_FFFF, _FFFFFFFF = 0xFFFF, 0xFFFFFFFF
_TAIL = 4096                     # bytes read from the end first: end records + small directory
_MAX_TAIL = 22 + 0xFFFF + 20 + 56  # end record, longest comment, ZIP64 locator and record
_FLAG_ENCRYPTED, _FLAG_DESCRIPTOR, _FLAG_UTF8 = 0x1, 0x8, 0x800
_STORED, _DEFLATED = 0, 8
_METHOD_NAMES = {8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd"}

# Writing (zipfile's thresholds: it switches to ZIP64 above 2 GiB - 1, as do we).
_ZIP64_LIMIT = (1 << 31) - 1
_ZIP_FILECOUNT_LIMIT = (1 << 16) - 1
#: Alignment of every member's array data in archives written by `save_npz`.
ALIGN = 64
_ALIGN_EXTRA_ID = 0xD935          # the extra field Android's zipalign pads with
_DOS_DATE, _DOS_TIME = (0 << 9) | (1 << 5) | 1, 0   # 1980-01-01 00:00: reproducible archives
#: Largest uncompressed size a member may claim: what ``zlib``'s output length can be.
_MAX_USIZE = sys.maxsize - 1


def _bad(name, what):
    return ValueError(f"{name}: {what}")


class _Entry:
    """One member, from its central directory entry."""
    __slots__ = ("key", "name", "raw", "flags", "method", "crc", "csize", "usize", "lho",
                 "limit", "cd_pos")


def _zip64_extra(extra, usize, csize, lho, name, member):
    """Replace the 0xFFFFFFFF fields by the values of the ZIP64 extra field (id 1)."""
    i, n = 0, len(extra)
    while i + 4 <= n:
        tag, size = struct.unpack_from("<HH", extra, i)
        if i + 4 + size > n:
            raise _bad(name, f"member {member!r}: corrupt extra field (field {tag:#06x} of "
                             f"{size} bytes runs past the {n}-byte extra data)")
        if tag == 1:
            k, end = i + 4, i + 4 + size
            values = []
            for v in (usize, csize, lho):
                if v == _FFFFFFFF:
                    if k + 8 > end:
                        raise _bad(name, f"member {member!r}: ZIP64 extra field of {size} "
                                         f"bytes lacks a value its 0xFFFFFFFF fields need")
                    v = struct.unpack_from("<Q", extra, k)[0]
                    k += 8
                values.append(v)
            return values
        i += 4 + size
    raise _bad(name, f"member {member!r}: sizes or offset are 0xFFFFFFFF but there is no "
                     f"ZIP64 extra field with their values")


def _read_directory(fd, first, size, name):
    """Parse the end records and the central directory; return (entries, cd_start, cd)."""
    def get(pos, n):
        if pos + n <= len(first):
            return first[pos:pos + n]
        if tail_start <= pos and pos + n <= tail_start + len(tail):
            return tail[pos - tail_start:pos - tail_start + n]
        return _fmt.read_at(fd, pos, n)

    if size < 22:
        raise _bad(name, f"not a zip archive: {size} bytes, fewer than the 22-byte "
                         f"end-of-central-directory record")
    if size <= len(first):
        tail_start, tail = 0, first
    else:
        tail_start = max(0, size - _TAIL)
        tail = _fmt.read_at(fd, tail_start, size - tail_start)
    pos = _find_eocd(tail, size - tail_start)
    if pos < 0 and tail_start > 0:
        tail_start = max(0, size - _MAX_TAIL)
        tail = _fmt.read_at(fd, tail_start, size - tail_start)
        pos = _find_eocd(tail, len(tail))
    if pos < 0:
        raise _bad(name, "not a zip archive: no end-of-central-directory record (truncated "
                         "or not a .npz)")
    eocd = tail_start + pos
    _, disk, cd_disk, n_disk, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, pos)
    cd_end = eocd
    loc = eocd - 20
    if loc >= 0 and get(loc, 4) == _SIG_LOC64:
        _, z_disk, rec_offset, n_disks = _LOC64.unpack(get(loc, 20))
        if z_disk != 0 or n_disks > 1:
            raise _bad(name, "zip archives spanning several disks are not supported")
        rec = loc - 56
        if rec < 0 or get(rec, 4) != _SIG_EOCD64:
            if rec_offset + 56 > loc or get(rec_offset, 4) != _SIG_EOCD64:
                raise _bad(name, f"the ZIP64 end-of-central-directory locator points at offset "
                                 f"{rec_offset}, where there is no ZIP64 end record (the "
                                 f"file has {size} bytes)")
            rec = rec_offset
        (_, rec_size, _, _, disk, cd_disk, n_disk, count, cd_size,
         cd_offset) = _EOCD64.unpack(get(rec, 56))
        if rec + 12 + rec_size != loc:
            raise _bad(name, f"the ZIP64 end record at {rec} says it has {rec_size + 12} "
                             f"bytes, but the locator follows at {loc}: inconsistent ZIP64 "
                             f"records")
        cd_end = rec
    if disk != 0 or cd_disk != 0 or n_disk != count:
        raise _bad(name, "zip archives spanning several disks are not supported (disk "
                         f"numbers {disk}, {cd_disk}; {n_disk} of {count} entries here)")
    concat = cd_end - cd_size - cd_offset  # bytes prepended to the archive (zipfile's rule)
    if concat < 0:
        raise _bad(name, f"the central directory (offset {cd_offset}, {cd_size} bytes) points "
                         f"outside the file: it would end at {cd_offset + cd_size}, past its "
                         f"end record at {cd_end} ({size} bytes in all)")
    if count * 46 > cd_size:
        raise _bad(name, f"the central directory claims {count} entries but has only "
                         f"{cd_size} bytes (at least 46 per entry)")
    cd_start = cd_offset + concat
    cd = get(cd_start, cd_size)
    if len(cd) != cd_size:
        raise _bad(name, "the central directory runs past the end of the file")
    return _parse_entries(cd, cd_start, count, concat, name), cd_start, cd


def _find_eocd(tail, end):
    """Position in ``tail`` of the last end record whose comment fits, or -1."""
    pos = tail.rfind(_SIG_EOCD)
    while pos >= 0:
        if pos + 22 <= end and pos + 22 + _U16.unpack_from(tail, pos + 20)[0] <= end:
            return pos
        pos = tail.rfind(_SIG_EOCD, 0, pos)
    return -1


_by_offset = operator.attrgetter("lho")


def _parse_entries(cd, cd_start, count, concat, name):
    entries = []
    p, n = 0, len(cd)
    unpack = _CDIR.unpack_from
    for _ in range(count):
        if p + 46 > n:
            raise _bad(name, f"truncated central directory entry at offset {cd_start + p}")
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _,
         lho) = unpack(cd, p)
        if sig != _SIG_CDIR:
            raise _bad(name, f"bad central directory entry at offset {cd_start + p} (expected "
                             f"signature {_SIG_CDIR!r}, found {sig!r})")
        q = p + 46
        end = q + nlen + elen + clen
        if end > n:
            raise _bad(name, f"central directory entry at offset {cd_start + p} runs past the "
                             f"end of the directory")
        raw = cd[q:q + nlen]
        try:
            member = raw.decode("utf-8" if flags & _FLAG_UTF8 else "cp437")
        except UnicodeDecodeError as exc:
            raise _bad(name, f"member name {raw!r} is not valid UTF-8") from exc
        if usize == _FFFFFFFF or csize == _FFFFFFFF or lho == _FFFFFFFF:
            usize, csize, lho = _zip64_extra(cd[q + nlen:q + nlen + elen], usize, csize, lho,
                                             name, member)
        if usize > _MAX_USIZE:  # a stored member's size is bounded by the file, below
            raise _bad(name, f"member {member!r} claims an uncompressed size of {usize} bytes, "
                             f"more than can be allocated (at most {_MAX_USIZE}): corrupt "
                             f"central directory")
        if method == _STORED and csize != usize:
            raise _bad(name, f"member {member!r} is stored uncompressed but its sizes differ "
                             f"({csize} stored, {usize} uncompressed)")
        e = _Entry()
        e.key = member[:-4] if member.endswith(".npy") else member
        e.name, e.raw, e.flags, e.method, e.crc = member, raw, flags, method, crc
        e.csize, e.usize, e.lho, e.cd_pos = csize, usize, lho + concat, cd_start + p
        entries.append(e)
        p = end
    if p != n:
        raise _bad(name, f"the central directory has {n} bytes but its {count} entries use "
                         f"{p}")
    # Members must lie, in offset order, one after the other before the directory: every
    # member's local header + name + data (a lower bound of its extent) ends before the next.
    ordered = sorted(entries, key=_by_offset)
    for i, e in enumerate(ordered):
        limit = ordered[i + 1].lho if i + 1 < len(ordered) else cd_start
        end = e.lho + 30 + len(e.raw) + e.csize
        if end > limit:
            what = (f"member {ordered[i + 1].name!r} at offset {limit}: members overlap"
                    if i + 1 < len(ordered) else
                    f"the central directory at offset {cd_start}: data past the end of the "
                    f"archive's data area")
            raise _bad(name, f"member {e.name!r} (local header at {e.lho}, {e.csize} bytes) "
                             f"runs into {what}")
        e.limit = limit
    return entries


def load_npz(fd, first, target, filename, name, mode, access, compressed, max_header_size,
             stacklevel):
    """Open an archive (called by `mmarray.load` with the file's first bytes read)."""
    st = os.fstat(fd)
    first = first if filename is not None else b""  # a file object's bytes start at tell()
    entries, cd_start, cd = _read_directory(fd, first, st.st_size, name)
    by_key = {}
    for e in entries:
        if e.key in by_key:
            raise _bad(name, f"two members are both named {e.key!r} (as np.load names them: "
                             f"{by_key[e.key].name!r} and {e.name!r})")
        by_key[e.key] = e
    packed = [e.key for e in entries if e.method != _STORED]
    if packed and compressed != "ignore":
        methods = sorted({_METHOD_NAMES.get(e.method, f"method {e.method}")
                          for e in entries if e.method != _STORED})
        shown = ", ".join(repr(k) for k in packed[:5]) + (", ..." if len(packed) > 5 else "")
        msg = (f"{len(packed)} of {len(entries)} members of {name} are compressed "
               f"({'/'.join(methods)}): {shown}; compressed members cannot be memory-mapped")
        if compressed == "error":
            raise ValueError(f"{msg} (compressed='error'); write the archive with np.savez or "
                             f"mmarray.save_npz to map every member")
        warnings.warn(f"{msg}, so they are decompressed into memory when accessed. Write the "
                      f"archive with np.savez or mmarray.save_npz to map them; pass "
                      f"compressed='error' to refuse or 'ignore' to silence this.",
                      CompressedMemberWarning, stacklevel=stacklevel)
    npz = NpzMapping.__new__(NpzMapping)
    npz._entries = by_key
    npz._members = {}
    npz._crcs = {}  # key -> _Crc, one per member for the archive's life (reopens share it)
    npz._closed = False
    npz._target = target if filename is None else filename
    npz._filename = filename
    npz._name = name
    npz._mode = mode
    npz._access = access
    npz._prefix = first
    # r+ keeps the directory as loaded: the bytes that prove a member's CRC-32 positions are
    # still its own before anything is written there (see _Crc).
    npz._cd = (cd_start, cd) if access == _engine.WRITE else None
    npz._id = (st.st_dev, st.st_ino)
    npz._max_header_size = max_header_size
    return npz


class NpzMapping(collections.abc.Mapping):
    """The members of a ``.npz`` archive, each mapped in place: ``name -> Mapping``.

    Returned by :func:`mmarray.load` for a zip archive; do not construct directly. A
    read-only :class:`collections.abc.Mapping`: ``keys()``, ``npz[name]``, ``name in npz``,
    ``len(npz)``, iteration, plus :meth:`close` and use as a context manager. Names are what
    ``np.load`` gives (the member's file name without its ``.npy`` suffix; ``npz['a.npy']``
    works too).

    A member is opened on first access and the same object is returned until it is closed.
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

    Mode ``'r+'`` reads each member once, when it is first opened, to verify its CRC-32
    against what the archive stores now: a member whose CRC-32 does not match its data
    (corrupt, or written without its CRC-32 being updated, for example by a process that
    crashed before :meth:`~mmarray.Mapping.flush`) raises ValueError rather than getting a
    fresh CRC-32 that would make it look valid; mode ``'r'`` still maps it. Modes ``'r'``
    and ``'c'`` do not check the CRC-32 of stored members (that would read all of their
    data).

    The archive holds no file descriptor between accesses: a member access reopens the file
    by name (or uses the file object given to :func:`mmarray.load`, which must stay open).

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
        e = self._entries.get(key)
        if e is None:
            e = self._suffixed(key)
            if e is None:
                raise KeyError(f"{key!r} is not a member of {self._name}; members: "
                               f"{list(self._entries)!r}")
        if self._closed:
            raise ValueError(f"archive {self._name} is closed")
        m = self._members.get(e.key)
        if m is None or m.closed:
            m = self._open(e)
            self._members[e.key] = m
        return m

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
        if self._closed:
            return
        self._closed = True
        error = None
        members, self._members = self._members, {}
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
        return _reopen(self._target, self._id, flags, label, "reload it with mmarray.load")

    def _read(self, fd, pos, n):
        prefix = self._prefix
        if pos + n <= len(prefix):
            return prefix[pos:pos + n]
        return _fmt.read_at(fd, pos, n)

    def _open(self, e):
        label = f"{self._name} member {e.key!r}"
        if e.flags & _FLAG_ENCRYPTED:
            raise ValueError(f"{label} is encrypted; mmarray cannot read encrypted members")
        fd, owned = self._fd(label)
        try:
            data, head = self._local_header(fd, e, label)
            if e.method != _STORED:
                return self._inflate(fd, owned, e, data, label)
            return self._map(fd, e, data, head, label)
        finally:
            if owned:
                os.close(fd)

    def _local_header(self, fd, e, label):
        """Check the local header; return (data offset, its first 30 + name length bytes)."""
        head = self._read(fd, e.lho, min(30 + len(e.raw), e.limit - e.lho))
        if len(head) < 30 or head[:4] != _SIG_LOCAL:
            raise ValueError(f"{label}: no local file header at offset {e.lho} (expected "
                             f"signature {_SIG_LOCAL!r}, found {head[:4]!r})")
        nlen, elen = _U16X2.unpack_from(head, 26)
        if head[30:30 + nlen] != e.raw or nlen != len(e.raw):
            raise ValueError(f"{label}: the local header names {head[30:30 + nlen]!r}, the "
                             f"central directory {e.raw!r}")
        data = e.lho + 30 + nlen + elen
        if data + e.csize > e.limit:
            raise ValueError(f"{label}: its data (offset {data}, {e.csize} bytes) runs past "
                             f"offset {e.limit}, where the next member or the central "
                             f"directory starts: members overlap or the archive is corrupt")
        return data, head

    def _map(self, fd, e, data, head, label):
        mode, access = self._mode, self._access
        prefix = self._prefix
        if data + min(e.csize, 256) <= len(prefix):  # the header is (most likely) at hand
            first = prefix[data:data + e.csize]
        else:
            first = _fmt.read_at(fd, data, min(e.csize, 1024))
        if first[:6] == _fmt.MAGIC:
            hlen, dt, shape, order, nbytes = _fmt.parse_header(
                first, lambda pos, n: self._read(fd, data + pos, min(n, e.csize - pos)),
                e.csize, label, self._max_header_size)
            if hlen + nbytes > e.csize:
                raise ValueError(f"{label}: the header says {_api._short_repr(shape)} x {dt} = "
                                 f"{nbytes} bytes of data, but the member holds only "
                                 f"{e.csize - hlen} after its {hlen}-byte header")
        else:  # not a .npy: its raw bytes, as np.load returns them
            hlen, dt, shape, order, nbytes = 0, _U8, (e.csize,), "C", e.csize
        offset = data + hlen
        cls = Mapping if access != _engine.WRITE else _NpzMember
        if cls is _NpzMember:
            crc = self._crcs.get(e.key)
            if crc is None:  # first r+ open: the CRC-32 is checked (the member read once)
                header = first[:hlen] if len(first) >= hlen else self._read(fd, data, hlen)
                crc = self._new_crc(fd, e, data, head, header, offset, nbytes, label)
                self._crcs[e.key] = crc
            else:
                crc.check(fd)
        m = _fmt.map_region(fd, access, offset, nbytes, dt, shape, order, mode, self._filename,
                            cls)
        if cls is _NpzMember:
            m._crc = crc
            m._finalizer = weakref.finalize(m, _final_crc, crc)
        return m

    def _new_crc(self, fd, e, data, head, header, offset, nbytes, label):
        """The `_Crc` of a member opened in mode 'r+', once its CRC-32 is found valid.

        Records where the CRC-32 is stored and the bytes that place the member (its local
        header, central directory entry and data descriptor, except CRC-32s and timestamps),
        checks them against the file now, and reads the member's stored bytes to check the
        CRC-32: ValueError if it does not match, since every write-back would then make a
        corrupt member look valid.
        """
        _, _, lflags, _, _, _, lcrc, lcsize, lusize, nlen, elen = _LOCAL.unpack_from(head)
        flags, lho, end = e.flags | lflags, e.lho, data + e.csize
        positions, where = [e.cd_pos + 16], ["central directory"]
        if not flags & _FLAG_DESCRIPTOR or lcrc:
            positions.append(lho + 14)
            where.append("local header")
        # Local header: signature, flags + method, the sizes unless a data descriptor has
        # them (with the ZIP64 extra field if they are there), name and extra lengths, name.
        proof = [(lho, head[:4]), (lho + 6, head[6:10]), (lho + 26, head[26:30 + nlen])]
        if not lflags & _FLAG_DESCRIPTOR:
            proof.append((lho + 18, head[18:26]))
            if _FFFFFFFF in (lcsize, lusize):
                proof.append((lho + 30 + nlen, self._read(fd, lho + 30 + nlen, elen)))
        # Central directory entry: signature, flags + method, sizes and name/extra lengths,
        # local header offset and name (and the extra field if ZIP64 values are there).
        cd_start, cd = self._cd
        p = e.cd_pos - cd_start
        cnlen, celen = _U16X2.unpack_from(cd, p + 28)
        proof += [(e.cd_pos, cd[p:p + 4]), (e.cd_pos + 8, cd[p + 8:p + 12]),
                  (e.cd_pos + 20, cd[p + 20:p + 32]), (e.cd_pos + 42, cd[p + 42:p + 46 + cnlen])]
        if _FFFFFFFF in struct.unpack_from("<LLL", cd[p + 20:p + 28] + cd[p + 42:p + 46]):
            proof.append((e.cd_pos + 46 + cnlen, cd[p + 46 + cnlen:p + 46 + cnlen + celen]))
        if flags & _FLAG_DESCRIPTOR:  # optional signature, CRC-32, 4- or 8-byte sizes
            tail = self._read(fd, end, max(0, min(24, e.limit - end)))
            crc_pos = end + 4 if tail[:4] == _SIG_DD else end
            if crc_pos + 4 > e.limit:
                raise ValueError(f"{label}: its data descriptor at offset {end} runs past "
                                 f"offset {e.limit} (next member or central directory)")
            positions.append(crc_pos)
            where.append("data descriptor")
            sizes = tail[crc_pos + 4 - end:]
            narrow = len(sizes) >= 8 and struct.unpack_from("<LL", sizes) == (e.csize, e.usize)
            wide = (not narrow and len(sizes) >= 16
                    and struct.unpack_from("<QQ", sizes) == (e.csize, e.usize))
            proof += [(end, tail[:crc_pos - end]), (crc_pos + 4, sizes[:16 if wide else 8])]
        crc = _Crc(self._target, self._id, label, header, data, offset, nbytes, end,
                   positions, where, proof)
        crc.check(fd)
        crc.verify(fd)
        return crc

    def _inflate(self, fd, owned, e, data, label):
        raw = self._read(fd, data, e.csize)
        if len(raw) != e.csize:
            raise ValueError(f"{label}: its data runs past the end of the file")
        if e.method == _DEFLATED:
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

        try:
            with (open(fd, "rb", closefd=False) if fd is not None else
                  contextlib.nullcontext(self._target)) as fp, zipfile.ZipFile(fp) as zf:
                return zf.read(e.name)
        except (ValueError, OSError):
            raise
        except Exception as exc:  # BadZipFile, NotImplementedError, lzma.LZMAError, ...
            raise ValueError(f"{label}: cannot decompress "
                             f"({_METHOD_NAMES.get(e.method, f'method {e.method}')}): "
                             f"{type(exc).__name__}: {exc}") from exc


_U8 = np.dtype(np.uint8)


# -- CRC-32 upkeep for members written through mode 'r+' ------------------------------------

def _reopen(target, file_id, flags, label, advice):
    """(fd, owned): ``target`` (a path) reopened with ``flags``, or a file object's descriptor.

    The one check that the file is still the archive that was loaded: ValueError naming the
    path if its (st_dev, st_ino) is no longer ``file_id`` (the path was replaced, for example
    by `save_npz` renaming a new file over it).
    """
    if isinstance(target, (str, bytes)):
        fd, owned = os.open(target, flags), True
    else:
        fd, owned = _api.fileno_of(target), False
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != file_id:
            where = target if isinstance(target, (str, bytes)) else getattr(target, "name",
                                                                           target)
            raise ValueError(f"{label}: the archive {where!r} was replaced since it was "
                             f"loaded (the file now at that path is another one); {advice}")
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return fd, owned


class _Crc:
    """Where a member's CRC-32 is recorded, how to recompute it, and how to tell it is there.

    One per member of an archive loaded in mode 'r+', shared by every Mapping of that member
    (a reopen after close, a closed one kept alive by its arrays). Nothing is written unless
    the file still holds the member where it was loaded (`check`), and the recomputed value
    is compared with what each position holds now, not with a remembered value: another
    handle on the archive may have rewritten it since.
    """
    __slots__ = ("target", "id", "label", "header", "start", "data", "nbytes", "end",
                 "positions", "where", "proof", "size", "lock", "__weakref__")

    def __init__(self, target, file_id, label, header, start, data, nbytes, end, positions,
                 where, proof):
        self.target, self.id, self.label = target, file_id, label
        # header: the member's .npy header; start: where its stored bytes begin; data, nbytes:
        # the mapped array data; end: where the stored bytes end.
        self.header, self.start, self.data, self.nbytes = header, start, data, nbytes
        self.end, self.positions, self.where = end, positions, where
        # proof: (offset, bytes) that must read back unchanged; size: the file must reach it.
        self.proof = [(pos, want) for pos, want in proof if want]
        self.size = max([end] + [p + 4 for p in positions] +
                        [pos + len(want) for pos, want in self.proof])
        # Finalizers of other Mappings of the member may update from another thread (or
        # from a garbage collection inside an update: hence reentrant).
        self.lock = threading.RLock()
        _live_crcs.add(self)

    def moved(self, fd):
        """Why the file no longer holds the member as loaded, or None if it does."""
        size = os.fstat(fd).st_size
        if size < self.size:
            return f"the file has {size} bytes, the member and its records need {self.size}"
        for pos, want in self.proof:
            if _fmt.read_at(fd, pos, len(want)) != want:
                return f"the {len(want)} bytes at offset {pos} are not those of the member"
        return None

    def check(self, fd):
        """ValueError if the archive was rewritten in place since it was loaded."""
        why = self.moved(fd)
        if why is not None:
            raise ValueError(f"{self.label}: the archive was rewritten in place since it was "
                             f"loaded ({why}); reload it with mmarray.load")

    def stored(self, fd):
        """The CRC-32 values the archive holds now, one per position."""
        return [struct.unpack("<L", _fmt.read_at(fd, p, 4))[0] for p in self.positions]

    def crc_from_file(self, fd, pos, crc):
        """Continue ``crc`` over the stored bytes from ``pos`` to the member's end."""
        while pos < self.end:
            chunk = _fmt.read_at(fd, pos, min(_fmt.CHUNK, self.end - pos))
            if not chunk:
                raise ValueError(f"{self.label}: the archive was truncated")
            crc = zlib.crc32(chunk, crc)
            pos += len(chunk)
        return crc

    def verify(self, fd):
        """ValueError unless every stored CRC-32 matches the member's stored bytes."""
        stored = self.stored(fd)
        computed = self.crc_from_file(fd, self.start, 0)
        if any(v != computed for v in stored):
            found = ", ".join(f"{w} {v:#010x}" for w, v in zip(self.where, stored))
            raise ValueError(
                f"{self.label}: bad CRC-32: the archive stores {found}, its data gives "
                f"{computed:#010x}; the member is corrupt or was changed without its CRC-32, "
                f"and mode 'r+' refuses it (each write-back would make it look valid). Open "
                f"the archive with mode 'r' to read it as it is (np.load and zipfile report "
                f"the bad CRC-32)")

    def update(self, member, sync):
        """Recompute from the live mapping ``member`` (or from the file if None); rewrite."""
        with self.lock:
            self._update(member, sync)

    def _update(self, member, sync):
        fd, owned = _reopen(self.target, self.id, _fmt.O_WRITE, self.label,
                            "its CRC-32 is not updated")
        try:
            why = self.moved(fd)  # before reading the mapping: past a truncation it SIGBUSes
            if why is not None:
                warnings.warn(f"{self.label}: its CRC-32 is not updated, nothing is written: "
                              f"the archive was rewritten or truncated in place since it was "
                              f"loaded ({why})", RuntimeWarning, stacklevel=4)
                return
            if member is not None:
                crc = zlib.crc32(self.header)
                if self.nbytes:
                    # Through an export object, not the Mapping's own buffer: a raw buffer of
                    # the Mapping would defer its unmap to its garbage collection.
                    crc = zlib.crc32(member._export(), crc)
                crc = self.crc_from_file(fd, self.data + self.nbytes, crc)  # trailing bytes
            else:
                crc = self.crc_from_file(fd, self.start, 0)
            packed, written = struct.pack("<L", crc), False
            for p, old in zip(self.positions, self.stored(fd)):
                if old != crc:
                    _fmt.pwrite(fd, packed, p)
                    written = True
            if written and sync:
                os.fsync(fd)
        finally:
            if owned:
                os.close(fd)


_live_crcs = weakref.WeakSet()  # every _Crc, for the fork handler


def _new_locks_after_fork():
    """In a forked child: a _Crc lock held by a parent thread would never be released there
    (the exit-time CRC update would hang), and no child thread holds one yet."""
    for crc in list(_live_crcs):
        crc.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def _final_crc(crc):
    """The last word on a member's CRC-32, once its mapping is gone (or at exit)."""
    try:
        crc.update(None, False)
    except Exception as exc:  # a finalizer must not raise; say what went wrong
        warnings.warn(f"could not update the CRC-32 of {crc.label}: {exc}", RuntimeWarning)


class _NpzMember(Mapping):
    """A member mapped with mode 'r+': flush and close keep its CRC-32 valid."""
    __slots__ = ("_crc", "_finalizer")

    def flush(self, start=None, stop=None, sync=True):
        """As :meth:`Mapping.flush`, then recompute and rewrite the member's CRC-32."""
        super().flush(start, stop, sync)
        self._crc.update(self, sync)

    def close(self, strict=False):
        """As :meth:`Mapping.close`, after rewriting the member's CRC-32."""
        if self.closed:
            return
        if strict and self.exports:
            return super().close(True)  # raises BufferError, changes nothing
        try:
            self._crc.update(self, False)
        finally:
            super().close(strict)
            if not self.exports:  # unmapped: no later write possible
                self._finalizer.detach()


# -- compressed members -----------------------------------------------------------------------

class InMemoryMember:
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


# -- writing ----------------------------------------------------------------------------------

def save_npz(file, /, **arrays):
    """Write arrays to an uncompressed ``.npz`` whose members' data are 64-byte aligned.

    ``np.load`` and every zip reader read the result as they read ``np.savez``'s; in
    addition each member's array data starts at a multiple of 64 bytes in the file (the
    local headers are padded through their extra field, as Android's ``zipalign`` does), so
    the arrays :func:`mmarray.load` maps from it are aligned. Members get the ``.npy``
    headers ``numpy.lib.format`` writes; the archive uses ZIP64 where sizes, offsets or the
    member count need it; timestamps are fixed (1980-01-01) so equal arrays give equal
    files.

    Parameters
    ----------
    file : str, bytes, os.PathLike or file object
        A path: the archive is written under a hidden temporary name next to it, fsynced,
        renamed over it when complete and the directory fsynced, so a failure, a crash or a
        power loss leaves the old file or the complete new one (nothing is left behind on
        failure; temporaries a killed writer left for the same path are removed once their
        process is gone; an existing file's permission bits are kept). The name is used as
        given (``np.savez`` appends ``.npz``). A file object must be binary, writable and
        seekable; the archive is written at its current position.
    **arrays : array_like
        Member name -> array. Arrays holding Python objects are refused (they would be
        pickled, and could not be mapped).

    Raises
    ------
    ValueError
        An array of object dtype or itemsize 0, a file object that cannot seek, or a path
        holding a null byte.
    TypeError
        ``file`` is neither a path nor a writable file object.
    OSError
        From the operating system.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "aligned.npz")
    >>> mmarray.save_npz(path, x=np.arange(5, dtype=np.int32), y=np.eye(2))
    >>> np.load(path)["x"].tolist()
    [0, 1, 2, 3, 4]
    >>> with mmarray.load(path) as npz:
    ...     [npz[k].offset % 64 for k in npz]
    [0, 0]
    """
    members = []
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"array {key!r} has dtype {arr.dtype}, which holds Python objects; "
                             f"they cannot be stored for mapping (np.savez would pickle them)")
        if arr.dtype.itemsize == 0:
            raise ValueError(f"array {key!r} has dtype {arr.dtype} of itemsize 0, which cannot "
                             f"be mapped")
        members.append((key + ".npy", arr,
                        _fmt.header_bytes(_format.header_data_from_array_1_0(arr))))

    if isinstance(file, (str, bytes, os.PathLike)):
        path, perms = _fmt.replace_target(file)
        fd, tmp = _fmt.temp_sibling(path)
        try:
            if perms is not None:
                os.chmod(tmp, perms)
            with os.fdopen(fd, "wb") as fp:
                _write_archive(fp, members)
                fp.flush()
                os.fsync(fd)
            _fmt.replace_durably(tmp, path)
        except BaseException:
            _fmt.discard(tmp)
            raise
        return
    if not (hasattr(file, "write") and hasattr(file, "seek") and hasattr(file, "tell")):
        raise TypeError(f"file must be a path or a binary file object with write, seek and "
                        f"tell, got {type(file).__name__}")
    if hasattr(file, "seekable") and not file.seekable():
        raise ValueError(f"save_npz needs a seekable file object (it rewrites each member's "
                         f"CRC-32 after its data), got {file!r}")
    _write_archive(file, members)


def _write_archive(fp, members):
    directory = []
    for name, arr, header in members:
        raw = name.encode("utf-8")
        flags = 0 if raw.isascii() else _FLAG_UTF8
        size = len(header) + arr.nbytes
        lho = fp.tell()
        big = size > _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        fill = (-(lho + 30 + len(raw) + len(extra) + 6)) % ALIGN
        extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, 2 + fill, ALIGN) + bytes(fill)
        field = _FFFFFFFF if big else size
        fp.write(_LOCAL.pack(_SIG_LOCAL, 45 if big else 20, flags, _STORED, _DOS_TIME,
                             _DOS_DATE, 0, field, field, len(raw), len(extra)) + raw + extra)
        fp.write(header)
        crc = _write_data(fp, arr, zlib.crc32(header))
        end = fp.tell()
        if end - lho - 30 - len(raw) - len(extra) != size:  # pragma: no cover - a bad writer
            raise OSError(f"member {name!r}: wrote {end - lho} bytes, expected {size}")
        fp.seek(lho + 14)
        fp.write(struct.pack("<L", crc))
        fp.seek(end)
        directory.append((raw, flags, crc, size, lho))

    cd_offset = fp.tell()
    for raw, flags, crc, size, lho in directory:
        values = ([size, size] if size > _ZIP64_LIMIT else []) + \
            ([lho] if lho > _ZIP64_LIMIT else [])
        extra = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) \
            if values else b""
        version = 45 if values else 20
        field = _FFFFFFFF if size > _ZIP64_LIMIT else size
        fp.write(_CDIR.pack(_SIG_CDIR, (3 << 8) | version, version, flags, _STORED,
                            _DOS_TIME, _DOS_DATE, crc, field, field, len(raw), len(extra), 0,
                            0, 0, (0o100644 << 16) & _FFFFFFFF,
                            _FFFFFFFF if lho > _ZIP64_LIMIT else lho) + raw + extra)
    cd_end = fp.tell()
    count, cd_size = len(directory), cd_end - cd_offset
    if count > _ZIP_FILECOUNT_LIMIT or cd_offset > _ZIP64_LIMIT or cd_size > _ZIP64_LIMIT:
        fp.write(_EOCD64.pack(_SIG_EOCD64, 44, (3 << 8) | 45, 45, 0, 0, count, count, cd_size,
                              cd_offset))
        fp.write(_LOC64.pack(_SIG_LOC64, 0, cd_end, 1))
        fp.write(_EOCD.pack(_SIG_EOCD, 0, 0, min(count, _FFFF), min(count, _FFFF),
                            min(cd_size, _FFFFFFFF), min(cd_offset, _FFFFFFFF), 0))
    else:
        fp.write(_EOCD.pack(_SIG_EOCD, 0, 0, count, count, cd_size, cd_offset, 0))


def _write_data(fp, arr, crc):
    """Write ``arr``'s data in the order its header says; return the running CRC-32."""
    if arr.flags.c_contiguous or arr.flags.f_contiguous:
        flat = (arr if arr.flags.c_contiguous else arr.T).reshape(-1).view(_U8)
        for start in range(0, flat.size, _fmt.CHUNK):
            chunk = flat[start:start + _fmt.CHUNK]
            crc = zlib.crc32(chunk, crc)
            fp.write(chunk)
        return crc
    for chunk in np.nditer(arr, flags=["external_loop", "buffered", "zerosize_ok"],
                           buffersize=max(_fmt.CHUNK // arr.itemsize, 1), order="C"):
        data = chunk.tobytes("C")
        crc = zlib.crc32(data, crc)
        fp.write(data)
    return crc
