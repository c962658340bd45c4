"""Writing ``.npz`` archives whose members' array data are aligned (`save_npz`)."""
from __future__ import annotations

import os
import struct
import zlib

import numpy as np
from numpy.lib import format as _format

from mmarray import _npyformat as _fmt
from mmarray._zipdir import (
    CDIR,
    EOCD,
    EOCD64,
    FFFF,
    FFFFFFFF,
    FLAG_UTF8,
    LOC64,
    LOCAL,
    SIG_CDIR,
    SIG_EOCD,
    SIG_EOCD64,
    SIG_LOC64,
    SIG_LOCAL,
    STORED,
)

__all__ = ["save_npz"]

# zipfile's thresholds: it switches to ZIP64 above 2 GiB - 1, as do we.
_ZIP64_LIMIT = (1 << 31) - 1
_ZIP_FILECOUNT_LIMIT = (1 << 16) - 1
_NAME_MAX = 0xFFFF  # the 16-bit name length fields of the local header and directory entry
#: Alignment of every member's array data in archives written by `save_npz`.
ALIGN = 64
_ALIGN_EXTRA_ID = 0xD935          # the extra field Android's zipalign pads with
_DOS_DATE, _DOS_TIME = (0 << 9) | (1 << 5) | 1, 0   # 1980-01-01 00:00: reproducible archives
_U8 = np.dtype(np.uint8)


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
        seekable, and not in append mode; the archive is written at its current position.
    **arrays : array_like
        Member name -> array. Arrays holding Python objects are refused (they would be
        pickled, and could not be mapped).

    Raises
    ------
    ValueError
        An array of object dtype, a member name that is not valid in a zip
        archive (longer than 65535 bytes in UTF-8 with its ``.npy`` suffix, not encodable
        as UTF-8, or holding a null byte, at which zip readers cut it), a file object that
        cannot seek or is open in append mode, or a path holding a null byte. Checked
        before anything is written.
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
    for key in arrays:
        _check_name(key)
    members = []
    for key, value in arrays.items():
        arr = np.asarray(value)
        if arr.dtype.hasobject:
            raise ValueError(f"array {key!r} has dtype {arr.dtype}, which holds Python objects; "
                             f"they cannot be stored for mapping (np.savez would pickle them)")
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
    try:
        fd = file.fileno()
    except (AttributeError, OSError, ValueError):  # BytesIO: io.UnsupportedOperation
        fd = None
    if _fmt.appends(file, fd if isinstance(fd, int) and fd >= 0 else None):
        raise ValueError(f"save_npz cannot write to {file!r}, open in append mode: every "
                         f"write goes to the end of the file, so each member's CRC-32, "
                         f"written back after its data, would land there; open it with 'wb' "
                         f"or 'r+b'")
    _write_archive(file, members)


def _check_name(key):
    """ValueError naming the member unless ``key + '.npy'`` can be a zip member's name that
    every reader reads back as ``key``: UTF-8 encodable, at most 65535 bytes (the length
    fields of the local header and the directory entry are 16 bits), no NUL (``zipfile``, so
    ``np.load``, cuts names at the first one)."""
    shown = _short(key)
    if not isinstance(key, str):  # pragma: no cover - keyword names are always str
        raise TypeError(f"member name {shown} is not a str")
    try:
        raw = (key + ".npy").encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"member name {shown} cannot be encoded as UTF-8 (character "
                         f"{key[exc.start]!r} at index {exc.start}); expected a name a zip "
                         f"archive can hold") from None
    if len(raw) > _NAME_MAX:
        raise ValueError(f"member name {shown} is {len(raw)} bytes in UTF-8 with its '.npy' "
                         f"suffix, more than the {_NAME_MAX} a zip member's name can have; "
                         f"expected at most {_NAME_MAX - 4} bytes")
    if "\0" in key:
        raise ValueError(f"member name {shown} contains a null byte (\\0) at index "
                         f"{key.index(chr(0))}; zip readers (zipfile, so np.load) cut names "
                         f"there, so the member would read back as {key[:key.index(chr(0))]!r}")


def _short(key, limit=60):
    text = repr(key)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(key)} characters)"


def _write_archive(fp, members):
    directory = []
    for name, arr, header in members:
        raw = name.encode("utf-8")
        flags = 0 if raw.isascii() else FLAG_UTF8
        size = len(header) + arr.nbytes
        lho = fp.tell()
        big = size > _ZIP64_LIMIT
        extra = struct.pack("<HHQQ", 1, 16, size, size) if big else b""
        fill = (-(lho + 30 + len(raw) + len(extra) + 6)) % ALIGN
        extra += struct.pack("<HHH", _ALIGN_EXTRA_ID, 2 + fill, ALIGN) + bytes(fill)
        field = FFFFFFFF if big else size
        fp.write(LOCAL.pack(SIG_LOCAL, 45 if big else 20, flags, STORED, _DOS_TIME,
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
        field = FFFFFFFF if size > _ZIP64_LIMIT else size
        fp.write(CDIR.pack(SIG_CDIR, (3 << 8) | version, version, flags, STORED,
                            _DOS_TIME, _DOS_DATE, crc, field, field, len(raw), len(extra), 0,
                            0, 0, (0o100644 << 16) & FFFFFFFF,
                            FFFFFFFF if lho > _ZIP64_LIMIT else lho) + raw + extra)
    cd_end = fp.tell()
    count, cd_size = len(directory), cd_end - cd_offset
    if count > _ZIP_FILECOUNT_LIMIT or cd_offset > _ZIP64_LIMIT or cd_size > _ZIP64_LIMIT:
        fp.write(EOCD64.pack(SIG_EOCD64, 44, (3 << 8) | 45, 45, 0, 0, count, count, cd_size,
                              cd_offset))
        fp.write(LOC64.pack(SIG_LOC64, 0, cd_end, 1))
        fp.write(EOCD.pack(SIG_EOCD, 0, 0, min(count, FFFF), min(count, FFFF),
                            min(cd_size, FFFFFFFF), min(cd_offset, FFFFFFFF), 0))
    else:
        fp.write(EOCD.pack(SIG_EOCD, 0, 0, count, count, cd_size, cd_offset, 0))


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
                           buffersize=max(_fmt.CHUNK // max(arr.itemsize, 1), 1), order="C"):
        data = chunk.tobytes("C")
        crc = zlib.crc32(data, crc)
        fp.write(data)
    return crc
