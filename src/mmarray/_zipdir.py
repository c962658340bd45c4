"""The zip directory of an ``.npz``: end records, ZIP64, directory entries, local headers.

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

import operator
import os
import struct
import sys

from mmarray import _npyformat as _fmt

EOCD = struct.Struct("<4s4H2LH")            # end of central directory record
LOC64 = struct.Struct("<4sLQL")             # ZIP64 end of central directory locator
EOCD64 = struct.Struct("<4sQ2H2L4Q")        # ZIP64 end of central directory record
CDIR = struct.Struct("<4s6H3L5H2L")         # central directory file header
LOCAL = struct.Struct("<4s5H3L2H")          # local file header
_U16 = struct.Struct("<H")
U16X2 = struct.Struct("<HH")
SIG_EOCD, SIG_LOC64, SIG_EOCD64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"
SIG_CDIR, SIG_LOCAL, SIG_DD = b"PK\x01\x02", b"PK\x03\x04", b"PK\x07\x08"
FFFF, FFFFFFFF = 0xFFFF, 0xFFFFFFFF
_TAIL = 4096                     # bytes read from the end first: end records + small directory
_MAX_TAIL = 22 + 0xFFFF + 20 + 56  # end record, longest comment, ZIP64 locator and record
FLAG_ENCRYPTED, FLAG_DESCRIPTOR, FLAG_UTF8 = 0x1, 0x8, 0x800
STORED, DEFLATED = 0, 8
METHOD_NAMES = {8: "deflate", 9: "deflate64", 12: "bzip2", 14: "lzma", 93: "zstd"}
#: Largest uncompressed size a member may claim: what ``zlib``'s output length can be.
_MAX_USIZE = sys.maxsize - 1


def _bad(name, what):
    return ValueError(f"{name}: {what}")


class Entry:
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
                if v == FFFFFFFF:
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


def read_directory(fd, first, size, name):
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
    _, disk, cd_disk, n_disk, count, cd_size, cd_offset, _ = EOCD.unpack_from(tail, pos)
    cd_end = eocd
    loc = eocd - 20
    if loc >= 0 and get(loc, 4) == SIG_LOC64:
        _, z_disk, rec_offset, n_disks = LOC64.unpack(get(loc, 20))
        if z_disk != 0 or n_disks > 1:
            raise _bad(name, "zip archives spanning several disks are not supported")
        rec = loc - 56
        if rec < 0 or get(rec, 4) != SIG_EOCD64:
            if rec_offset + 56 > loc or get(rec_offset, 4) != SIG_EOCD64:
                raise _bad(name, f"the ZIP64 end-of-central-directory locator points at offset "
                                 f"{rec_offset}, where there is no ZIP64 end record (the "
                                 f"file has {size} bytes)")
            rec = rec_offset
        (_, rec_size, _, _, disk, cd_disk, n_disk, count, cd_size,
         cd_offset) = EOCD64.unpack(get(rec, 56))
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
    pos = tail.rfind(SIG_EOCD)
    while pos >= 0:
        if pos + 22 <= end and pos + 22 + _U16.unpack_from(tail, pos + 20)[0] <= end:
            return pos
        pos = tail.rfind(SIG_EOCD, 0, pos)
    return -1


_by_offset = operator.attrgetter("lho")


def _zipfile_name(member):
    """The name ``zipfile`` (so ``np.load``) gives a member named ``member`` in the
    directory: cut at the first null byte, ``os.sep`` made ``/`` (``ZipInfo.__init__``)."""
    nul = member.find("\0")
    if nul >= 0:
        member = member[:nul]
    if os.sep != "/" and os.sep in member:  # pragma: no cover - Windows
        member = member.replace(os.sep, "/")
    return member


def _parse_entries(cd, cd_start, count, concat, name):
    entries = []
    p, n = 0, len(cd)
    unpack = CDIR.unpack_from
    for _ in range(count):
        if p + 46 > n:
            raise _bad(name, f"truncated central directory entry at offset {cd_start + p}")
        (sig, _, _, flags, method, _, _, crc, csize, usize, nlen, elen, clen, _, _, _,
         lho) = unpack(cd, p)
        if sig != SIG_CDIR:
            raise _bad(name, f"bad central directory entry at offset {cd_start + p} (expected "
                             f"signature {SIG_CDIR!r}, found {sig!r})")
        q = p + 46
        end = q + nlen + elen + clen
        if end > n:
            raise _bad(name, f"central directory entry at offset {cd_start + p} runs past the "
                             f"end of the directory")
        raw = cd[q:q + nlen]
        try:
            member = raw.decode("utf-8" if flags & FLAG_UTF8 else "cp437")
        except UnicodeDecodeError as exc:
            raise _bad(name, f"member name {raw!r} is not valid UTF-8") from exc
        if usize == FFFFFFFF or csize == FFFFFFFF or lho == FFFFFFFF:
            usize, csize, lho = _zip64_extra(cd[q + nlen:q + nlen + elen], usize, csize, lho,
                                             name, member)
        if usize > _MAX_USIZE:  # a stored member's size is bounded by the file, below
            raise _bad(name, f"member {member!r} claims an uncompressed size of {usize} bytes, "
                             f"more than can be allocated (at most {_MAX_USIZE}): corrupt "
                             f"central directory")
        if method == STORED and csize != usize:
            raise _bad(name, f"member {member!r} is stored uncompressed but its sizes differ "
                             f"({csize} stored, {usize} uncompressed)")
        member = _zipfile_name(member)
        e = Entry()
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


def local_header(read, e, label):
    """Check member ``e``'s local header; return (data offset, its first 30 + name length
    bytes). ``read(pos, n)`` returns the archive's bytes at ``pos``."""
    head = read(e.lho, min(30 + len(e.raw), e.limit - e.lho))
    if len(head) < 30 or head[:4] != SIG_LOCAL:
        raise ValueError(f"{label}: no local file header at offset {e.lho} (expected "
                         f"signature {SIG_LOCAL!r}, found {head[:4]!r})")
    nlen, elen = U16X2.unpack_from(head, 26)
    if head[30:30 + nlen] != e.raw or nlen != len(e.raw):
        raise ValueError(f"{label}: the local header names {head[30:30 + nlen]!r}, the "
                         f"central directory {e.raw!r}")
    data = e.lho + 30 + nlen + elen
    if data + e.csize > e.limit:
        raise ValueError(f"{label}: its data (offset {data}, {e.csize} bytes) runs past "
                         f"offset {e.limit}, where the next member or the central "
                         f"directory starts: members overlap or the archive is corrupt")
    return data, head
