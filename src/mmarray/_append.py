"""Growing ``.npy`` files in place: :func:`append_npy`.

numpy writes ``.npy`` headers with room for the growth axis (the first for C order, the last
for Fortran order) to reach 21 digits, so rows can be appended by writing them after the data
and rewriting the shape inside the header, at the same length. The order of the writes is
what makes a crash harmless: the data first, then the header, so the file always says a
shape whose data it holds (``np.load`` ignores bytes after the data).

Bytes after the data are never overwritten or cut unless they provably are the leftover of
an append that did not finish: each append first writes, right after where its rows will
end, a 44-byte trailer (`_TRAILER`) naming the data's old and new end and the CRC-32 of the
header before and after, and cuts it off only after the header says the new shape. A file
whose bytes after the data end in such a trailer, at that very position and matching the
header, holds nothing else there; any other bytes after the data (a second array saved into
the same file object, anything appended by other tools) make `append_npy` refuse.

Appends to one file are serialized by an exclusive advisory lock on it (``flock``; on
Windows a byte-range lock far past the end of the file), taken before the header is read.
"""
from __future__ import annotations

import ast
import errno
import io
import os
import stat
import struct
import time
import zlib
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.lib import format as _format

from mmarray import _engine
from mmarray import _npyformat as _fmt

if TYPE_CHECKING:
    from _typeshed import StrOrBytesPath

__all__ = ["append_npy"]

_ZIP = b"PK\x03\x04"
_CHUNK = 64 << 20
#: Written right after the rows of an append until its header is written: magic, the data's
#: end before and after the append, CRC-32 of the header before and after, CRC-32 of these.
_TRAILER = struct.Struct("<16sQQLLL")
_TRAILER_MAGIC = b"\x00mmarray-append\x00"
#: Times append_npy reopens the file when it was replaced or removed while it waited.
_ATTEMPTS = 1000
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL}
_fcntl: Any
try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None
_msvcrt: Any
try:
    import msvcrt as _msvcrt  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    _msvcrt = None
_WIN_LOCK_AT = 1 << 62  # Windows locks are mandatory: lock a byte no reader ever reads
# Headers _grown_header wrote -> their bytes before and after the shape: the next append to
# the file reads that header again, and parsing it cost a quarter of an append of 1,000 rows
# (bench case append: 21.7 ms against npy-append-array's 14.7 ms); formatting the whole dict
# again, 3 us of about 30 per append.
_WRITTEN: dict[bytes, tuple[bytes, bytes]] = {}
_WRITTEN_MAX = 256


def append_npy(file: StrOrBytesPath, rows: Any, *, sync: bool = False) -> int:
    """Append ``rows`` to the ``.npy`` file ``file`` in place; create it when missing.

    The rows go after the existing data and the header's shape grows to cover them; nothing
    before them is rewritten, so arrays that mapped the file earlier stay valid. The data is
    written first and the header second: a crash in between leaves a file that ``np.load``
    reads with the old shape, never a broken one, and the next `append_npy` recognizes the
    leftover (by a trailer it writes after the rows until the header is written) and writes
    over it.

    Bytes after the data that are not such a leftover -- a second array ``np.save`` wrote
    into the same file object, data appended by other tools, or the leftover of a crashed
    append by a version of mmarray that wrote no trailer -- are never overwritten or cut:
    the call raises ValueError and leaves the file as it was.

    Appends to one file from several threads or processes are serialized by an exclusive
    advisory lock on the file (``flock`` on POSIX, a byte-range lock past the end of the
    file on Windows) held for the whole append; the header and size are read under it.
    Writers that do not take the lock (``np.save``, other tools) are not held off. On a
    filesystem without locks the append proceeds unserialized. A missing file is created
    under a temporary name and hard-linked into place, so two processes creating it at once
    both append (on a filesystem without hard links it is renamed into place, and such a race
    can lose the first creator's rows). A symbolic link is followed: a dangling one gets its
    target created, as ``np.save`` does.

    Parameters
    ----------
    file : str, bytes or os.PathLike
        The ``.npy`` file.
    rows : array_like
        Rows along the file's growth axis (the first for C order, the last for Fortran
        order): the file's dtype, the same number of dimensions, and the file's other
        dimensions. A new file takes the dtype and shape of ``rows`` (C order).
    sync : bool, optional
        Make the data durable before the header changes (``fsync``), and the header durable
        before returning.

    Returns
    -------
    int
        The file's new length along its growth axis.

    Raises
    ------
    TypeError
        ``rows`` has another dtype than the file, or one holding Python objects.
    ValueError
        ``rows`` does not match the file's other dimensions, the file is 0-d, not a ``.npy``
        (a ``.npz``, anything else), truncated, or has bytes after its data that are not the
        leftover of an unfinished append. The file is left exactly as it was.
    OSError
        From the operating system (naming ``file``). A failed write leaves the file as it
        was, except that the leftover of an earlier unfinished append is gone.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "log.npy")
    >>> for step in range(3):
    ...     n = mmarray.append_npy(path, np.full((2, 4), step, dtype="f4"))
    >>> n, np.load(path)[:, 0].tolist()
    (6, [0.0, 0.0, 1.0, 1.0, 2.0, 2.0])
    """
    if not isinstance(file, (str, bytes, os.PathLike)):
        raise TypeError(f"file must be a path (str, bytes, os.PathLike), got "
                        f"{type(file).__name__}")
    path = os.fspath(file)
    _fmt.check_path(path)
    path = os.fsdecode(path)
    name = repr(path)
    array = np.asarray(rows)
    if array.dtype.hasobject:
        raise TypeError(f"rows of dtype {array.dtype} hold Python objects, which a .npy "
                        f"cannot store in place; expected a dtype of plain data")
    if array.ndim == 0:
        raise ValueError("rows must have at least one dimension to append along, got a 0-d "
                         "array")
    for _ in range(_ATTEMPTS):
        try:
            # The descriptor is owned by a FileIO, which closes it when it is garbage: an
            # exception landing between any two steps here (the fault guard's are raised
            # asynchronously, at any bytecode; KeyboardInterrupt too) can neither leak it nor,
            # since closing the only descriptor of the file description drops its flock(2)
            # lock, leave the file locked against every later append (found by a fuzzing
            # review: appends hung in flock). Nothing maps from it.
            held = io.FileIO(path, "r+")
        except FileNotFoundError:
            n = _create(path, array, sync)
            if n is not None:
                return n
            continue  # another process created it meanwhile: append to that file
        try:
            fd = held.fileno()
            _lock(fd)
            st = _stat_if_at(fd, path)
            if st is not None:  # not replaced or removed while this waited for the lock
                return _append(fd, path, name, array, sync, st.st_size)
        finally:
            _release(held)
    raise OSError(errno.EAGAIN, f"the file was replaced or removed {_ATTEMPTS} times while "
                                f"append_npy waited for its lock", path)


def _lock(fd: int) -> None:
    """Take an exclusive advisory lock on the open file ``fd`` (waiting for it); released
    by `_release`. Nothing on a filesystem that has no locks."""
    if _fcntl is not None:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
    elif _msvcrt is not None:  # pragma: no cover - Windows
        os.lseek(fd, _WIN_LOCK_AT, os.SEEK_SET)
        while True:
            try:
                _msvcrt.locking(fd, _msvcrt.LK_NBLCK, 1)
                return
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EDEADLOCK):
                    raise
            time.sleep(0.01)


def _release(held: io.FileIO) -> None:
    """Release `_lock`'s lock on the file ``held`` owns, then close it (once: a closed one is
    left alone). Explicitly: a flock(2) lock belongs to the open file description, which a
    mapping made from the descriptor keeps alive after the close (mmap(2) holds a reference
    to the file; NpyMapping.resize maps the file it rewrote with room). If an exception lands
    in between, the FileIO closes its descriptor when it is freed, which drops the lock too
    unless a mapping shares the open file."""
    if held.closed:
        return
    try:
        _unlock(held.fileno())
    finally:
        held.close()


def _unlock(fd: int) -> None:
    """Release `_lock`'s lock on ``fd`` (nothing if none is held)."""
    if _fcntl is not None:
        try:
            _fcntl.flock(fd, _fcntl.LOCK_UN)
        except OSError:
            pass  # no lock taken (a filesystem without locks): nothing to release
    elif _msvcrt is not None:  # pragma: no cover - Windows
        try:
            os.lseek(fd, _WIN_LOCK_AT, os.SEEK_SET)
            _msvcrt.locking(fd, _msvcrt.LK_UNLCK, 1)
        except OSError:
            pass


def _stat_if_at(fd: int, path: str) -> os.stat_result | None:
    """``os.fstat(fd)`` if ``path`` (followed) is the file ``fd`` has open, else None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    mine = os.fstat(fd)
    return mine if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) else None


def _create(path: str, array: np.ndarray[Any, Any], sync: bool) -> int | None:
    """A new .npy holding ``array``, built under a temporary name and hard-linked into place
    (so that a file another process created meanwhile is not replaced: then None). A
    symbolic link at ``path`` gets its target created."""
    target = os.path.realpath(path) if os.path.islink(path) else path
    header = _fmt.header_bytes({"descr": _format.dtype_to_descr(array.dtype),
                                "fortran_order": False, "shape": array.shape})
    try:
        fd, tmp = _fmt.temp_sibling(target)
    except OSError as exc:
        if target == path:
            raise
        raise OSError(exc.errno, f"{exc.strerror}; the symbolic link points at {target!r}",
                      path) from exc
    try:
        _fmt.write_all(fd, header)
        _write_rows(fd, np.ascontiguousarray(array), len(header), "C")
        if sync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        try:
            os.link(tmp, target)  # fails if the name exists: never replaces a file
        except FileExistsError:
            return None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS,
                                 errno.EMLINK, errno.EACCES):
                raise OSError(exc.errno, exc.strerror, path) from exc
            if os.path.lexists(target):  # pragma: no cover - no hard links on this filesystem
                return None
            os.replace(tmp, target)      # pragma: no cover
        if sync:
            _fmt.fsync_directory(target)
    finally:
        if fd >= 0:
            os.close(fd)
        _fmt.discard(tmp)
    return int(array.shape[0])


def _leftover(fd: int, header: bytes, end: int, size: int) -> bool:
    """True if the ``size - end`` bytes after the data are the leftover of an append that
    did not finish: they end in its trailer, which sits right after the rows it wrote and
    names this data end and the CRC-32 of this header (before or after that append)."""
    n = _TRAILER.size
    if size - end < n:
        return False
    raw = _fmt.read_at(fd, size - n, n)
    if len(raw) != n:
        return False
    magic, old_end, new_end, old_crc, new_crc, crc = _TRAILER.unpack(raw)
    if magic != _TRAILER_MAGIC or crc != zlib.crc32(raw[:-4]) or new_end != size - n:
        return False
    mine = zlib.crc32(header)
    return (end, mine) in ((old_end, old_crc), (new_end, new_crc))


def trailer_bytes(old_end: int, new_end: int, old_header: bytes, new_header: bytes) -> bytes:
    """The trailer an unfinished growth leaves at ``new_end``: the file's data ends at
    ``old_end`` under ``old_header`` or at ``new_end`` under ``new_header`` (see
    :func:`_leftover`)."""
    trailer = _TRAILER.pack(_TRAILER_MAGIC, old_end, new_end, zlib.crc32(old_header),
                            zlib.crc32(new_header), 0)
    return trailer[:-4] + struct.pack("<L", zlib.crc32(trailer[:-4]))


def _append(fd: int, path: str, name: str, array: np.ndarray[Any, Any],
            sync: bool, size: int | None = None) -> int:
    """Append ``array`` to the .npy open (and locked) as ``fd``, ``size`` bytes long (read
    under the lock; None: read here)."""
    if size is None:
        size = os.fstat(fd).st_size
    first = _fmt.read_at(fd, 0, _fmt.FIRST_READ)
    if first[:4] == _ZIP:
        raise ValueError(f"{name} is a .npz archive; append_npy appends to a .npy file")
    hlen, dt, shape, order, nbytes = _fmt.parse_header(
        first, lambda pos, n: _fmt.read_at(fd, pos, n), None, name)
    if not shape:
        raise ValueError(f"{name} holds a 0-d array, which has no axis to grow")
    axis = 0 if order == "C" else len(shape) - 1
    if array.dtype != dt:
        raise TypeError(f"rows of dtype {array.dtype} cannot be appended to {name}, which "
                        f"holds {dt}; expected rows of dtype {dt}")
    if array.ndim != len(shape) or \
            array.shape[:axis] + array.shape[axis + 1:] != shape[:axis] + shape[axis + 1:]:
        expected = "(" + ", ".join("n" if i == axis else str(d)
                                   for i, d in enumerate(shape)) + ")"
        raise ValueError(f"rows of shape {array.shape} do not fit {name} of shape {shape} "
                         f"({'C' if order == 'C' else 'Fortran'} order, growing along axis "
                         f"{axis}); expected rows of shape {expected}")
    end = hlen + nbytes
    if size < end:
        raise ValueError(f"{name}: the header says {nbytes} bytes of data, but the file has "
                         f"only {max(size - hlen, 0)} after its {hlen}-byte header: truncated")
    old_header = first[:hlen] if len(first) >= hlen else _fmt.read_at(fd, 0, hlen)
    if size > end:
        if not _leftover(fd, old_header, end, size):
            raise ValueError(
                f"{name}: its header and data end at byte {end} but the file has {size} "
                f"bytes; the {size - end} bytes after the data are not the leftover of an "
                f"unfinished append_npy (another array saved into the same file, or data "
                f"added by other tools) and appending would overwrite them. The file is left "
                f"as it was: copy the array to a file of its own (np.save(new_path, "
                f"np.load(path))), or if the bytes after byte {end} are not wanted, cut them "
                f"(os.truncate(path, {end})) and append again")
    new_shape = shape[:axis] + (shape[axis] + array.shape[axis],) + shape[axis + 1:]
    # A length numpy could not read back is refused before the file is touched (rows of an
    # itemsize of 0 cost no bytes: only this check bounds them).
    _fmt._nbytes(new_shape, dt.itemsize, f"{name} grown by {array.shape[axis]} rows")
    header = _grown_header(old_header, new_shape, name)
    if header is None:  # no room for the new length: rewrite the file once, with room
        st = os.fstat(fd)
        if _engine.live_views(st.st_dev, st.st_ino):
            raise BufferError(f"{name}: its header has no room for shape {new_shape} and the "
                              f"file would be rewritten, but another mapping of it is open in "
                              f"this process (it would keep the old file): close it first")
        held = _with_room(fd, path, dt, shape, order, hlen, nbytes, name)[1]
        try:
            return _append(held.fileno(), path, name, array, sync)
        finally:
            _release(held)
    if size > end:  # provably an unfinished append's leftover: cut once committed to write
        os.ftruncate(fd, end)
        size = end
    new_end = end + array.nbytes
    if array.size:
        trailer = trailer_bytes(end, new_end, old_header, header)
        try:
            _write_at(fd, trailer, new_end)  # first: what follows the data is marked ours
            _write_rows(fd, array, end, order)
            if sync:
                os.fsync(fd)  # the data is durable before the header says it is there
        except BaseException as exc:
            try:              # a failed write (full disk, RLIMIT_FSIZE): the old end again
                if os.fstat(fd).st_size > size:
                    os.ftruncate(fd, size)
            except OSError:
                pass
            if isinstance(exc, OSError) and exc.errno == errno.EFAULT:
                # write(2) read the rows from pages that are gone (no SIGBUS: the kernel
                # returns EFAULT), which said neither the file nor why
                raise OSError(errno.EFAULT, f"{exc.strerror}: the rows could not be read (an "
                                            f"array mapped from a file that was truncated "
                                            f"since, or memory that cannot be read); {name} "
                                            f"is left as it was", path) from exc
            raise
    _fmt.pwrite(fd, header, 0)
    if array.size:
        if sync:
            os.fsync(fd)  # the header is durable before the trailer goes
        os.ftruncate(fd, new_end)
    if sync:
        os.fsync(fd)
    return int(new_shape[axis])


def _write_at(fd: int, data: bytes, pos: int) -> None:
    """Write the (small) ``data`` at ``pos`` (not through ``_fmt.pwrite``, which writes the
    header)."""
    if hasattr(os, "pwrite"):
        done = 0
        while done < len(data):
            # After a short write (a full disk, a file-size limit) the next one says why.
            n = os.pwrite(fd, data[done:], pos + done)
            if n <= 0:  # pragma: no cover - pwrite(2) writes or fails
                raise OSError(errno.EIO, f"short write of {len(data)} bytes at offset {pos}")
            done += n
    else:  # pragma: no cover - Windows
        os.lseek(fd, pos, os.SEEK_SET)
        _fmt.write_all(fd, data)


def _grown_header(header: bytes, shape: tuple[int, ...], name: str) -> bytes | None:
    """``header`` (magic to newline) with its shape replaced by ``shape``, at the same length;
    None when the padding has no room for it.

    The header dict is parsed (as numpy reads it, a Python literal) and written again as numpy
    writes it, keys in order: a field name in ``descr`` that looks like a shape is data, not
    the shape."""
    if header[:6] != b"\x93NUMPY" or len(header) < 10:
        raise ValueError(f"{name}: not a .npy header")
    major = header[6]
    start = 10 if major == 1 else 12
    encoding = "utf-8" if major >= 3 else "latin1"
    shape = tuple(int(x) for x in shape)
    known = _WRITTEN.get(header)
    if known is not None:
        # A header this wrote: the same fields around another shape.
        head, tail = known
        return _padded(head, shape, tail, encoding, len(header))
    try:
        d = ast.literal_eval(header[start:].decode(encoding))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        raise ValueError(f"{name}: its header is not a Python literal dict") from None
    if not isinstance(d, dict) or not isinstance(d.get("shape"), tuple):
        raise ValueError(f"{name}: its header has no shape field that can grow")
    if isinstance(d.get("descr"), tuple):
        # A subarray descr such as ('<i4', (2,)): np.load (and parse_header) give its base
        # dtype, its dimensions after the header's shape, and ``shape`` counts them: the
        # header says so in numpy's own terms (the base dtype's descr), as np.save would.
        try:
            dt = _format.descr_to_dtype(d["descr"])
        except (TypeError, ValueError):
            raise ValueError(f"{name}: its header's descr {d['descr']!r} is not a dtype") \
                from None
        d["descr"] = _format.dtype_to_descr(_engine.without_subarray(dt, ())[0])
    d["shape"] = shape
    # As numpy writes it: "{'key': repr(value), ...}", keys sorted; split around the shape.
    items = [f"'{key}': {value!r}, " for key, value in sorted(d.items())]
    at = sorted(d).index("shape")
    try:
        head = header[:start] + ("{" + "".join(items[:at]) + "'shape': ").encode(encoding)
        tail = (", " + "".join(items[at + 1:]) + "}").encode(encoding)
    except UnicodeEncodeError:
        return None
    return _padded(head, shape, tail, encoding, len(header))


def _padded(head: bytes, shape: tuple[int, ...], tail: bytes, encoding: str,
            length: int) -> bytes | None:
    """The header ``head + repr(shape) + tail`` padded with spaces and a newline to
    ``length`` bytes (None when it does not fit), remembered as one this wrote."""
    body = head + repr(shape).encode(encoding) + tail
    if len(body) + 1 > length:
        return None
    grown = body + b" " * (length - len(body) - 1) + b"\n"
    if len(_WRITTEN) >= _WRITTEN_MAX:
        _WRITTEN.clear()
    # Its fields are those of the header it grew (literal_eval of the text gives them back:
    # reprs of str, bool, tuples) with another shape: the next append replaces only that.
    _WRITTEN[grown] = (head, tail)
    return grown


def _with_room(fd: int, path: str, dt: np.dtype[Any], shape: tuple[int, ...],
               order: str, hlen: int, nbytes: int, name: str,
               reopen: bool = False, made: list[str] | None = None
               ) -> tuple[io.FileIO | None, io.FileIO, str]:
    """Rewrite the .npy with a header that has room to grow (numpy's), under a temporary
    name renamed over the file; return (None, the new file, the file's real path), the new
    file open, locked (`_lock`) and owned by a FileIO (release it with `_release`). Arrays
    mapped from the old file keep its data.

    With ``reopen``, the copy is not renamed, and the first item is a second FileIO of it,
    not locked, opened by its temporary name (its ``name``), to map it from: the caller
    renames it over the real path in the same step as it moves its mapping there
    (NpyMapping.resize, through Region._rebase), and removes it if that does not happen
    (`_discard_unrenamed`). ``made`` (a list) gets the temporary's name before the file
    exists, and loses it if the name is found to lead to someone else's file: a caller can
    remove what is left there whatever bytecode an exception lands at.

    A mapping must not be made from the locked descriptor: mmap(2) keeps a reference to the
    open file, and with it the flock(2) lock, which belongs to the open file, until the
    unmap. If an exception then landed before the explicit unlock, closing the FileIO did
    not drop the lock, and every append to the file waited for as long as the mapping lived.

    The copy goes next to the real file (a symbolic link is followed, not replaced) with its
    mode bits, and is renamed over it only if the name still leads to the file ``fd`` opened,
    unchanged since the copy (same identity, size and modification time). Refused for a file
    with several hard links: a rename would split them."""
    header = _fmt.header_bytes({"descr": _format.dtype_to_descr(dt),
                                "fortran_order": order == "F", "shape": shape})
    if _grown_header(header, shape[:-1] + (10**20,) if order == "F" else (10**20,) + shape[1:],
                     name) is None:
        raise ValueError(f"{name}: its header cannot hold a larger shape")
    before = os.fstat(fd)
    if before.st_nlink > 1:
        raise ValueError(f"{name}: its header has no room for the larger shape, and rewriting "
                         f"the file would split its {before.st_nlink} hard links")
    target = os.path.realpath(os.fsdecode(path))
    try:
        at_name = os.stat(target)
    except FileNotFoundError:
        at_name = None
    if at_name is None or (at_name.st_dev, at_name.st_ino) != (before.st_dev, before.st_ino):
        raise ValueError(f"{name} is no longer the file that was opened (replaced or renamed "
                         f"since): refusing to rewrite it")
    if made is None:
        made = []
    held = plain = None
    try:
        # Owned by a FileIO from its creation: an exception landing anywhere cannot leak
        # it locked; its name is in `made` before it exists, for the cleanup.
        held = _fmt.temp_sibling_file(target, made)
        tmp = made[-1]
        new = held.fileno()
        _lock(new)  # held until the append to it is done: others wait, then reopen it
        if reopen:  # another open file of the same temporary: checked to be the same
            plain = io.FileIO(tmp, "r+")
            ours, other = os.fstat(new), os.fstat(plain.fileno())
            if (ours.st_dev, ours.st_ino) != (other.st_dev, other.st_ino):
                made.remove(tmp)  # someone else's file now: not ours to remove
                raise ValueError(f"{name}: the temporary copy {tmp!r} was replaced while it "
                                 f"was being written: left as it is")
        if hasattr(os, "fchmod"):
            os.fchmod(new, stat.S_IMODE(before.st_mode))
        _fmt.write_all(new, header)
        done = 0
        while done < nbytes:
            chunk = _fmt.read_at(fd, hlen + done, min(_CHUNK, nbytes - done))
            if not chunk:
                raise ValueError(f"{name}: its data ends early")
            _fmt.write_all(new, chunk)
            done += len(chunk)
        os.fsync(new)
        after = os.fstat(fd)
        try:
            now = os.stat(target)
        except FileNotFoundError:
            now = None
        same = (before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns)
        if now is None or (now.st_dev, now.st_ino) != same[:2] or \
                (after.st_size, after.st_mtime_ns) != same[2:] or after.st_nlink > 1:
            raise ValueError(f"{name} changed while it was being rewritten with a larger "
                             f"header (replaced, renamed, written or linked): left as it is")
        if not reopen:
            _fmt.replace_durably(tmp, target)
        return plain, held, target
    except BaseException:
        try:
            if plain is not None:
                plain.close()
        finally:
            if held is not None:
                _release(held)
            for name in made:  # a name renamed away is gone: discard ignores it
                _fmt.discard(name)
        raise


def _discard_unrenamed(made: list[str], copy: io.FileIO | None) -> None:
    """Close ``copy`` (`_with_room`'s second FileIO of its temporary copy, or None if an
    exception kept it from being handed over) and remove the temporaries in ``made`` that
    were not renamed over the real file (refused, or interrupted). With ``copy``, only a
    name that still leads to that file is removed; once renamed, the name leads nowhere."""
    try:
        for name in made:
            if copy is None or _leads_to(name, copy.fileno()):
                _fmt.discard(name)
    finally:
        if copy is not None:
            copy.close()


def _leads_to(name: str, fd: int) -> bool:
    """Whether the path ``name`` leads to the file open as ``fd`` (False if it leads
    nowhere)."""
    try:
        at_name = os.stat(name)
    except OSError:
        return False
    ours = os.fstat(fd)
    return (at_name.st_dev, at_name.st_ino) == (ours.st_dev, ours.st_ino)


def _write_rows(fd: int, array: np.ndarray[Any, Any], pos: int, order: str) -> None:
    """Write ``array``'s elements at ``pos`` in the file's order, without a second copy when
    the array is already laid out that way."""
    done = 0
    if order == "C" and hasattr(os, "pwrite") and array.flags.c_contiguous:
        # The common case in one call, on the array's own buffer (any dtype exports one).
        buffer: Any = array  # an ndarray is a buffer; numpy's stubs do not say so
        done = os.pwrite(fd, buffer, pos)
        if done == array.nbytes:
            return
    laid = np.asfortranarray(array) if order == "F" else np.ascontiguousarray(array)
    # Flattened in its own memory order (a view), then seen as bytes: any dtype, no copy.
    flat: Any = laid.reshape(-1, order="F" if order == "F" else "C").view(np.uint8)
    data = memoryview(flat)[done:]  # what a short first write left
    pos += done
    if hasattr(os, "pwrite"):
        view = data
        while view:
            written = os.pwrite(fd, view[:1 << 30], pos)
            view = view[written:]
            pos += written
    else:  # pragma: no cover - Windows
        os.lseek(fd, pos, os.SEEK_SET)
        _fmt.write_all(fd, data)

