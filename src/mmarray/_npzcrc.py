"""CRC-32 upkeep for ``.npz`` members mapped with mode 'r+'.

A member written through its mapping must get a new CRC-32 in the archive (local header,
central directory, data descriptor) or ``zipfile`` and ``np.load`` reject it. `new_crc`
records, when a member is first opened, where its CRC-32 is stored and the bytes that prove
the member is still there (its layout); `NpzMember` rewrites the CRC-32 on flush and close,
and a finalizer once the last array of a closed member is gone (or at exit).
"""
from __future__ import annotations

import os
import stat
import struct
import threading
import warnings
import weakref
import zlib

from mmarray import _api
from mmarray import _npyformat as _fmt
from mmarray._mapping import Mapping
from mmarray._warn import warn_at_caller
from mmarray._zipdir import FFFFFFFF, FLAG_DESCRIPTOR, LOCAL, SIG_DD, U16X2

_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # POSIX only


def reopen(target, file_id, flags, label, advice):
    """(fd, owned): ``target`` (a path) reopened with ``flags``, or a file object's descriptor.

    The one check that the file is still the archive that was loaded: ValueError naming the
    path if its (st_dev, st_ino) is no longer ``file_id`` (the path was replaced, for example
    by `save_npz` renaming a new file over it). ValueError too if ``flags`` write and the file
    object was switched to append mode since (see `refuse_append`).
    """
    if isinstance(target, (str, bytes)):
        # O_NONBLOCK: a FIFO put at the path since must not block the open ("fifo(7)"); the
        # check below then finds it is not the archive. No effect on a regular file's I/O.
        fd, owned = os.open(target, flags | _O_NONBLOCK), True
    else:
        fd, owned = _api.fileno_of(target), False
        if flags & (os.O_WRONLY | os.O_RDWR):
            refuse_append(target, fd, label)
    try:
        st = os.fstat(fd)
        # Not a regular file: not the archive, even with its numbers (an inode number is
        # reused once the file is gone: a FIFO made at the path may get the same one).
        if (st.st_dev, st.st_ino) != file_id or not stat.S_ISREG(st.st_mode):
            where = target if isinstance(target, (str, bytes)) else getattr(target, "name",
                                                                           target)
            raise ValueError(f"{label}: the archive {where!r} was replaced since it was "
                             f"loaded (the file now at that path is another one); {advice}")
    except BaseException:
        if owned:
            os.close(fd)
        raise
    return fd, owned


class Held:
    """An archive's descriptor, opened for writing when it was loaded with mode ``'r+'`` by
    path, and kept by the CRC-32 records of its members (`_Crc.target`) for as long as one
    may still rewrite its CRC-32: a rewrite goes to the file whose member was written, even
    if the path was renamed, replaced or made read-only since. Member opens still go by the
    path (`reopen`): a path that no longer leads to the loaded archive refuses them.
    A file-object-like (`fileno`, `name`) for `reopen`; closed when garbage."""
    __slots__ = ("fd", "name")

    def __init__(self, fd, name):
        self.fd = -1
        self.name = name
        self.fd = os.dup(fd)  # not inherited by child processes (os.dup's default)

    def fileno(self):
        return self.fd

    def __reduce__(self):
        # A copy (copy.copy, pickle) would hold the same descriptor number and close it when
        # garbage: the archive's CRC-32 rewrites would then go to whatever file reuses it.
        raise TypeError("an archive's held descriptor cannot be copied or pickled")

    def __del__(self, _close=os.close):
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                _close(fd)
            except OSError:
                pass


def refuse_append(file, fd, label):
    """ValueError if the file object ``file`` (descriptor ``fd``) appends every write."""
    if _fmt.appends(file, fd):
        raise ValueError(f"{label}: mode 'r+' cannot keep the CRC-32s of an archive open in "
                         f"append mode (every write to it goes to the end of the file, so "
                         f"each CRC-32 rewrite would land there); open it with 'r+b'")


class _Crc:
    """Where a member's CRC-32 is recorded, how to recompute it, and how to tell it is there.

    One per member of an archive loaded in mode 'r+', shared by every Mapping of that member
    (a reopen after close, a closed one kept alive by its arrays). Nothing is written unless
    the file still holds the member where it was loaded (`check`), and the recomputed value
    is compared with what each position holds now, not with a remembered value: another
    handle on the archive may have rewritten it since. Updates hold the member's `lock`,
    which every handle on the archive in this process shares.
    """
    __slots__ = ("target", "id", "label", "start", "data", "nbytes", "end",
                 "positions", "where", "proof", "size", "shared", "faulted", "__weakref__")

    def __init__(self, target, file_id, label, start, data, nbytes, end, positions, where,
                 proof):
        self.target, self.id, self.label = target, file_id, label
        self.faulted = False  # a mapping of it faulted: its CRC-32 is never rewritten again
        # start: where the member's stored bytes begin (its .npy header, then its data);
        # data, nbytes: the mapped array data; end: where the stored bytes end.
        self.start, self.data, self.nbytes = start, data, nbytes
        self.end, self.positions, self.where = end, positions, where
        # proof: (offset, bytes) that must read back unchanged; size: the file must reach it.
        self.proof = [(pos, want) for pos, want in proof if want]
        self.size = max([end] + [p + 4 for p in positions] +
                        [pos + len(want) for pos, want in self.proof])
        self.shared = _member_lock((*file_id, data))

    @property
    def lock(self):
        """The member's update lock, shared with the other handles on the archive."""
        return self.shared.lock

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

    def crc_from_file(self, fd, pos, crc, stop=None):
        """Continue ``crc`` over the stored bytes from ``pos`` to ``stop`` (the member's end
        by default)."""
        stop = self.end if stop is None else stop
        while pos < stop:
            chunk = _fmt.read_at(fd, pos, min(_fmt.CHUNK, stop - pos))
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
        fd, owned = reopen(self.target, self.id, _fmt.O_WRITE, self.label,
                            "its CRC-32 is not updated")
        try:
            why = self.moved(fd)  # before reading the mapping: past a truncation it SIGBUSes
            if why is not None:
                warn_at_caller(f"{self.label}: its CRC-32 is not updated, nothing is written: "
                               f"the archive was rewritten or truncated in place since it was "
                               f"loaded ({why})", RuntimeWarning)
                return
            if self.faulted or (member is not None and member._faults()):
                # Zero pages stood for data the file may not have: bless nothing, now or
                # later (the finalizer recomputes from the file, torn as it may be).
                self.faulted = True
                return
            if member is not None:
                # The file's bytes, not those read at open, around the mapped data: the .npy
                # header (checked by `moved`, but read again) and any trailing bytes.
                crc = self.crc_from_file(fd, self.start, 0, self.data)
                if self.nbytes:
                    # Through an export object, not the Mapping's own buffer: a raw buffer of
                    # the Mapping would defer its unmap to its garbage collection.
                    try:
                        export = member._export()
                    except ValueError:
                        if not member.closed:
                            raise
                        # Closed by another thread meanwhile (which rewrote the CRC-32, or
                        # its finalizer will): the same bytes, read from the file.
                        export = _fmt.read_at(fd, self.data, self.nbytes)
                    crc = zlib.crc32(export, crc)
                crc = self.crc_from_file(fd, self.data + self.nbytes, crc)  # trailing bytes
                if member._faults():  # it faulted while the CRC-32 was computed over it
                    self.faulted = True
                    return
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
        if member is not None and isinstance(self.target, Held):
            self.refuse_if_replaced()

    def refuse_if_replaced(self):
        """ValueError if the archive's path now leads to another file: what was written
        through the member, and its CRC-32 (rewritten through the held descriptor), are in
        the file that was loaded, which is no longer at the path. Nothing at the path
        (renamed or deleted) says nothing."""
        name = self.target.name
        try:
            st = os.stat(name)
        except (OSError, ValueError):
            return
        if (st.st_dev, st.st_ino) != self.id:
            raise ValueError(f"{self.label}: the archive {name!r} was replaced since it was "
                             f"loaded (the file now at that path is another one): what was "
                             f"written, and its CRC-32, are in the file that was loaded, "
                             f"which is no longer at that path")


class _MemberLock:
    """Serialises the CRC-32 updates of one member across every handle on its archive in
    this process (each NpzMapping has its own `_Crc`): an update computes and writes while
    holding it, so the last one computes after the others wrote, and its value stands.
    Reentrant: finalizers of other Mappings of the member may update from another thread, or
    from a garbage collection inside an update."""
    __slots__ = ("lock", "members", "__weakref__")

    def __init__(self):
        self.lock = threading.RLock()
        self.members = weakref.WeakSet()  # the NpzMembers of it, every handle's (`track`)


# (st_dev, st_ino, member data offset) -> _MemberLock, while a _Crc of that member lives
_member_locks: weakref.WeakValueDictionary[tuple[int, int, int], _MemberLock] = (
    weakref.WeakValueDictionary())
_member_locks_guard = threading.Lock()


def _member_lock(key):
    with _member_locks_guard:
        shared = _member_locks.get(key)
        if shared is None:
            shared = _member_locks[key] = _MemberLock()
        return shared


def _new_locks_after_fork():
    """In a forked child: a lock held by a parent thread would never be released there (the
    exit-time CRC update would hang), and no child thread holds one yet."""
    global _member_locks_guard
    _member_locks_guard = threading.Lock()
    for shared in list(_member_locks.values()):
        shared.lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_locks_after_fork)


def _final_crc(crc):
    """The last word on a member's CRC-32, once its mapping is gone (or at exit)."""
    try:
        crc.update(None, False)
    except Exception as exc:  # a finalizer must not raise; say what went wrong
        warnings.warn(f"could not update the CRC-32 of {crc.label}: {exc}", RuntimeWarning,
                      stacklevel=2)


class NpzMember(Mapping):
    """A member mapped with mode 'r+': flush and close keep its CRC-32 valid."""
    __slots__ = ("_crc", "_finalizer")

    def resize(self, shape, *, truncate=False):
        """Refused: a member lies inside its archive, which cannot grow in place."""
        raise ValueError(f"{self._crc.label} is a member of a .npz archive, which cannot grow "
                         f"or shrink in place; save the archive anew (mmarray.save_npz)")

    def _shared_file(self):
        # Another process writing into the member would bypass this one's CRC upkeep and
        # leave the archive with a CRC-32 that does not match its data.
        raise TypeError(f"a .npz member mapped with mode 'r+' ({self._crc.label}) cannot be "
                        f"shared by reference: writes from another process would not update "
                        f"its CRC-32; load the archive with mode 'r' to share a member, or "
                        f"keep writable shared data in a .npy or raw file")

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
            try:
                super().close(strict)  # raises MappedFileError if the member faulted
            finally:
                if not self.exports:  # unmapped: no later write possible
                    self._finalizer.detach()


def track(member, crc):
    """Attach ``crc`` to the new NpzMember ``member``: its CRC-32 is rewritten once the
    mapping is gone, if ``close`` did not do it (arrays kept it alive), or at exit."""
    member._crc = crc
    member._finalizer = weakref.finalize(member, _final_crc, crc)
    crc.shared.members.add(member)


def new_crc(target, file_id, directory, read, fd, e, data, head, header, offset, nbytes, label):
    """The `_Crc` of a member opened in mode 'r+', once its CRC-32 is found valid.

    ``target`` and ``file_id`` name the archive (see `reopen`), ``directory`` is its central
    directory as loaded (``(offset, bytes)``), ``read(pos, n)`` reads the archive (open as
    ``fd``); ``e`` is the member's directory entry, ``data`` where its stored bytes start,
    ``head`` the first 30 + name length bytes of its local header, ``header`` its .npy header,
    ``offset`` and ``nbytes`` its array data.

    Records where the CRC-32 is stored and the bytes that place the member (its local
    header, central directory entry and data descriptor, except CRC-32s and timestamps) and
    give its mapping's dtype, shape and order (its .npy header), checks them against the
    file now, and reads the member's stored bytes to check the
    CRC-32: ValueError if it does not match, since every write-back would then make a
    corrupt member look valid.
    """
    _, _, lflags, _, _, _, lcrc, lcsize, lusize, nlen, elen = LOCAL.unpack_from(head)
    flags, lho, end = e.flags | lflags, e.lho, data + e.csize
    positions, where = [e.cd_pos + 16], ["central directory"]
    if not flags & FLAG_DESCRIPTOR or lcrc:
        positions.append(lho + 14)
        where.append("local header")
    # Local header: signature, flags + method, the sizes unless a data descriptor has
    # them (with the ZIP64 extra field if they are there), name and extra lengths, name.
    proof = [(lho, head[:4]), (lho + 6, head[6:10]), (lho + 26, head[26:30 + nlen])]
    if not lflags & FLAG_DESCRIPTOR:
        proof.append((lho + 18, head[18:26]))
        if FFFFFFFF in (lcsize, lusize):
            proof.append((lho + 30 + nlen, read(lho + 30 + nlen, elen)))
    # Central directory entry: signature, flags + method, sizes and name/extra lengths,
    # local header offset and name (and the extra field if ZIP64 values are there).
    cd_start, cd = directory
    p = e.cd_pos - cd_start
    cnlen, celen = U16X2.unpack_from(cd, p + 28)
    proof += [(e.cd_pos, cd[p:p + 4]), (e.cd_pos + 8, cd[p + 8:p + 12]),
              (e.cd_pos + 20, cd[p + 20:p + 32]), (e.cd_pos + 42, cd[p + 42:p + 46 + cnlen])]
    if FFFFFFFF in struct.unpack_from("<LLL", cd[p + 20:p + 28] + cd[p + 42:p + 46]):
        proof.append((e.cd_pos + 46 + cnlen, cd[p + 46 + cnlen:p + 46 + cnlen + celen]))
    if flags & FLAG_DESCRIPTOR:  # optional signature, CRC-32, 4- or 8-byte sizes
        tail = read(end, max(0, min(24, e.limit - end)))
        crc_pos = end + 4 if tail[:4] == SIG_DD else end
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
    proof.append((data, header))  # what the mapping was made from: a rewrite may keep the rest
    crc = _Crc(target, file_id, label, data, offset, nbytes, end, positions, where, proof)
    crc.check(fd)
    with crc.lock:
        # Not while another handle in this process has the member mapped (or arrays of it
        # alive): its writes may not have their CRC-32 yet, which is not corruption (its flush
        # or close rewrites the CRC-32 from them, as it would over anything else there).
        # (A closed member whose finalizer is alive had arrays when it closed: its CRC-32 is
        # rewritten once it is garbage, and writes through those arrays may be pending.)
        if not any(not m.closed or m._finalizer.alive for m in list(crc.shared.members)):
            crc.verify(fd)
    return crc
