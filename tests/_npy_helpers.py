"""Helpers for the .npy/.npz tests: hand-built files (independent of mmarray's own writers)."""
import io
import os
import struct
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npformat

try:
    from numpy.lib._format_impl import _wrap_header
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.lib.format import _wrap_header

GIB = 1 << 30


class _Unseekable(io.RawIOBase):
    """A write-only stream without seek: zipfile then writes data descriptors."""

    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        return self.f.write(b)


def write_npz_with_descriptors(f, arrays):
    """Write ``arrays`` as .npy members of a zip on the binary stream ``f``, the way zipfile
    does when it cannot seek back: every member's CRC and sizes in a data descriptor."""
    with zipfile.ZipFile(_Unseekable(f), "w") as zf:
        for name, value in arrays.items():
            with zf.open(name + ".npy", "w") as member:
                npformat.write_array(member, value)


def npy_bytes(arr, version=None):
    """A complete .npy for ``arr``, as numpy writes it."""
    buf = io.BytesIO()
    npformat.write_array(buf, arr, version=version)
    return buf.getvalue()


def npy_header(header_text, version=(1, 0)):
    """A .npy header (magic to newline) wrapping ``header_text``, whatever it says."""
    return _wrap_header(header_text, version)


def write_sparse_npy(path, dtype, shape, fortran_order=False):
    """Write a .npy header with numpy.lib.format, then extend the file sparsely to its size."""
    dtype = np.dtype(dtype)
    with open(path, "wb") as f:
        npformat.write_array_header_1_0(
            f, {"descr": npformat.dtype_to_descr(dtype), "fortran_order": fortran_order,
                "shape": shape})
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape, dtype=object)) * dtype.itemsize)
    return offset


def zip64_archive(path, members, crc_holes=True):
    """Write a ZIP64 archive of stored members by hand; data given as bytes or as a size.

    ``members`` is a list of (name, header bytes, data) where data is bytes or an int (a hole
    of that many zero bytes, made by seeking: the file stays sparse). Every member gets ZIP64
    sizes and, in the central directory, a ZIP64 offset when it needs one. With
    ``crc_holes=False`` a hole's CRC-32 is left out (mmarray does not check stored members'
    CRCs; computing one over GiBs of zeros is slow). Returns the list of (local header
    offset, data offset) per member.
    """
    where = []
    cd = []
    with open(path, "wb") as f:
        for name, header, data in members:
            raw = name.encode()
            size = len(header) + (data if isinstance(data, int) else len(data))
            crc = zlib.crc32(header)
            if isinstance(data, int):
                crc = _crc_of_zeros(data, crc) if crc_holes else 0
            else:
                crc = zlib.crc32(data, crc)
            lho = f.tell()
            extra = struct.pack("<HHQQ", 1, 16, size, size)
            f.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", 45, 0, 0, 0, 0x21, crc,
                                0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra)) + raw + extra)
            where.append((lho, f.tell()))
            f.write(header)
            if isinstance(data, int):
                f.seek(data, os.SEEK_CUR)
            else:
                f.write(data)
            cd.append((raw, crc, size, lho))
        cd_offset = f.tell()
        for raw, crc, size, lho in cd:
            extra = struct.pack("<HH3Q", 1, 24, size, size, lho)
            f.write(struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 45 | (3 << 8), 45, 0, 0, 0,
                                0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra), 0, 0,
                                0, 0, 0xFFFFFFFF) + raw + extra)
        cd_end = f.tell()
        n = len(cd)
        f.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, n, n,
                            cd_end - cd_offset, cd_offset))
        f.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, cd_end, 1))
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF,
                            0xFFFFFFFF, 0))
    return where


def _crc_of_zeros(n, crc):
    block = bytes(1 << 24)
    while n:
        k = min(n, len(block))
        crc = zlib.crc32(memoryview(block)[:k], crc)
        n -= k
    return crc


def zip_layout(path):
    """zipfile's view of an archive: name -> (header_offset, data offset, size, CRC)."""
    import zipfile

    out = {}
    with open(path, "rb") as f, zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            f.seek(info.header_offset)
            local = f.read(30)
            nlen, elen = struct.unpack("<HH", local[26:30])
            out[info.filename] = (info.header_offset, info.header_offset + 30 + nlen + elen,
                                  info.file_size, info.CRC)
    return out
