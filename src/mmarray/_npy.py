"""Mapped ``.npy`` files: read the header, map only the data (or a range of rows of it).

`load` is the entry point for ``.npy`` and ``.npz`` files (the zip side lives in ``_npz``);
`create_npy` writes a new ``.npy`` and maps its data writable.

Header parsing
--------------
numpy's parser (``numpy.lib.format``'s ``_read_array_header``, built on ``ast.literal_eval``)
costs about 19 us per header, several times what mapping the data costs. Headers that numpy
itself wrote -- ``{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`` with a plain
string descr -- are therefore parsed by one anchored regular expression (well under 1 us) and
remembered by their exact bytes. Every other header (structured dtypes, Python 2 era headers,
anything unusual) goes to numpy's parser, which stays the reference: the tests check that
both agree.
"""
from __future__ import annotations

import io
import operator
import os
import re
import stat

import numpy as np
from numpy.lib import format as _format

from mmarray import _api, _engine

try:  # numpy >= 2.0 keeps the implementation in a private module
    from numpy.lib._format_impl import _read_array_header as _np_read_array_header
    from numpy.lib._format_impl import _write_array_header as _np_write_array_header
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.lib.format import _read_array_header as _np_read_array_header
    from numpy.lib.format import _write_array_header as _np_write_array_header

__all__ = ["load", "create_npy"]

MAGIC = b"\x93NUMPY"
_MAGIC_V1 = MAGIC + b"\x01\x00"
#: Bytes read at open: the magic, the header and usually all of a small .npz's directory.
FIRST_READ = 4096
#: numpy's default limit on the header length (``np.load(max_header_size=...)``).
MAX_HEADER_SIZE = 10000
_INT64_MAX = 2**63 - 1
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_READ = os.O_RDONLY | _O_BINARY
_O_WRITE = os.O_RDWR | _O_BINARY
_POSIX = os.name != "nt"
_READ = _engine.READ

# mode -> (access, normalized mode). 'w+' is refused by _check_mode (an existing file's data).
_LOAD_MODES = {"r": _engine.READ, "r+": _engine.WRITE, "c": _engine.COPY}
_MODE_ALIASES = {"readonly": "r", "readwrite": "r+", "copyonwrite": "c"}

_INT = rb"(?:0|[1-9][0-9]*)"
# Exactly what numpy writes for a plain-string descr; anything else goes to numpy's parser.
_HEADER_RE = re.compile(
    rb"\{'descr': '([^'\\\x00-\x1f\x7f-\xff]*)', 'fortran_order': (True|False), "
    rb"'shape': \((" + _INT + rb"(?:, " + _INT + rb")+|" + _INT + rb",|)\), \} *\n?")
_header_cache: dict = {}  # header bytes -> (dtype, shape, order, nbytes), for regex hits only
_descr_cache: dict = {}   # descr bytes -> checked dtype
_abspaths: dict = {}      # absolute str path -> os.path.abspath(path)
_CACHE_MAX = 512

if hasattr(os, "pread"):
    _pread = os.pread
else:  # pragma: no cover - Windows
    def _pread(fd, n, offset):
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


def read_at(fd, offset, n):
    """Read up to ``n`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while n > 0:
        chunk = _pread(fd, min(n, 1 << 30), offset)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
        offset += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def check_load_mode(mode):
    """Return (normalized mode, engine access) for `load`, or raise ValueError."""
    m = _MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else mode
    try:
        return m, _LOAD_MODES[m]
    except (KeyError, TypeError):
        pass
    if m in ("w+", "write"):
        raise ValueError("mode 'w+' would overwrite the file it is asked to read; "
                         "use mode 'r', 'r+' or 'c' for an existing .npy/.npz "
                         "(mmarray.create_npy creates a new .npy)")
    raise ValueError(f"mode must be one of 'r', 'r+', 'c' (or 'readonly', 'readwrite', "
                     f"'copyonwrite'), got {mode!r}")


# -- header -----------------------------------------------------------------------------------

def _checked_dtype(dt, name):
    if dt.hasobject:
        raise ValueError(
            f"{name}: dtype {dt} holds Python objects, which .npy stores pickled; numpy loads "
            f"such data only with allow_pickle=True, and it cannot be memory-mapped")
    if dt.itemsize == 0:
        raise ValueError(f"{name}: dtype {dt} has itemsize 0, which cannot be mapped")
    if dt.subdtype is not None:
        raise ValueError(f"{name}: descr {dt} is a subarray dtype; a .npy header's descr must "
                         f"be a scalar or structured dtype (np.load cannot read this file "
                         f"either)")
    return dt


def _descr_dtype(descr, name):
    try:
        return _descr_cache[descr]
    except KeyError:
        pass
    text = descr.decode("ascii")
    try:
        dt = np.dtype(text)
    except Exception as exc:  # TypeError for unknown names; anything else is a bad descr too
        raise ValueError(f"{name}: descr {text!r} is not a valid dtype descriptor") from exc
    _checked_dtype(dt, name)
    if len(_descr_cache) >= _CACHE_MAX:
        _descr_cache.clear()
    _descr_cache[descr] = dt
    return dt


def _nbytes(shape, itemsize, name):
    n = itemsize
    for d in shape:
        if d < 0:
            raise ValueError(f"{name}: header shape {shape} has a negative dimension")
        n *= d
    if n > _INT64_MAX:
        raise ValueError(f"{name}: header shape {shape} of itemsize {itemsize} is {n} bytes, "
                         f"more than any file can hold")
    return n


def _parse_fast(hb, name):
    """Parse a header numpy wrote, or return None."""
    m = _HEADER_RE.fullmatch(hb)
    if m is None:
        return None
    descr, fortran, dims = m.groups()
    dt = _descr_dtype(descr, name)
    shape = tuple(map(int, dims.rstrip(b",").split(b","))) if dims else ()
    order = "F" if fortran == b"True" else "C"
    result = (dt, shape, order, _nbytes(shape, dt.itemsize, name))
    if len(_header_cache) >= _CACHE_MAX:
        _header_cache.clear()
    _header_cache[hb] = result
    return result


def _parse_numpy(raw, version, name, max_header_size):
    """Parse with numpy's reader; ``raw`` starts at the header-length field."""
    try:
        shape, fortran, dt = _np_read_array_header(io.BytesIO(raw), version,
                                                   max_header_size=max_header_size)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    except Exception as exc:  # literal_eval's RecursionError, MemoryError, ...: a bad header
        raise ValueError(f"{name}: cannot parse the .npy header ({type(exc).__name__}: "
                         f"{exc})") from exc
    _checked_dtype(dt, name)
    if not all(type(d) is int for d in shape):  # numpy's check lets bools through
        raise ValueError(f"{name}: header shape {shape!r} is not a tuple of integers")
    return dt, shape, "F" if fortran else "C", _nbytes(shape, dt.itemsize, name)


def parse_header(first, read, limit, name, max_header_size=MAX_HEADER_SIZE):
    """Parse a .npy header.

    ``first`` holds the first bytes of the .npy (at least as many as the source has, up to
    some size); ``read(pos, n)`` returns bytes at ``pos`` (relative to the start of the .npy),
    fewer only at the end; ``limit`` is the number of bytes the .npy may occupy (None: until
    the end of the file). Returns ``(data_offset, dtype, shape, order, nbytes)`` with
    ``data_offset`` relative to the start of the .npy.
    """
    n = len(first)
    if first[:6] != MAGIC:
        if n < 6 and MAGIC.startswith(first):
            raise ValueError(f"{name}: truncated .npy: {n} bytes, fewer than the 6-byte magic "
                             f"string {MAGIC!r}")
        raise ValueError(f"{name}: not a .npy file: expected the magic string {MAGIC!r}, "
                         f"found {first[:6]!r}")
    if n < 8:
        raise ValueError(f"{name}: truncated .npy: {n} bytes, the format version is missing")
    major, minor = first[6], first[7]
    if minor != 0 or major not in (1, 2, 3):
        raise ValueError(f"{name}: unsupported .npy format version {major}.{minor}; expected "
                         f"1.0, 2.0 or 3.0")
    start = 10 if major == 1 else 12
    if n < start:
        raise ValueError(f"{name}: truncated .npy: {n} bytes, the header length field "
                         f"(bytes 8 to {start}) is incomplete")
    hlen = int.from_bytes(first[8:start], "little")
    end = start + hlen
    if hlen > (max_header_size if major < 3 else 4 * max_header_size):  # v3 is UTF-8
        raise ValueError(
            f"{name}: header length {hlen} exceeds max_header_size={max_header_size}; large "
            f"headers may not be safe to load (pass a larger max_header_size if you trust "
            f"the file)")
    if limit is not None and end > limit:
        raise ValueError(f"{name}: header length {hlen} runs past the end of the data "
                         f"({limit} bytes)")
    if end > n:
        first = first + read(n, end - n)
        if len(first) < end:
            raise ValueError(f"{name}: header length {hlen} runs past the end of the file "
                             f"({len(first)} bytes)")
    hb = first[start:end]
    hit = _header_cache.get(hb)
    if hit is None:
        hit = _parse_fast(hb, name)
        if hit is None:
            hit = _parse_numpy(first[8:end], (major, minor), name, max_header_size)
    dt, shape, order, nbytes = hit
    return end, dt, shape, order, nbytes


# -- rows -------------------------------------------------------------------------------------

def row_bounds(rows, shape, order):
    """Return ``(axis, lo, hi)`` for ``rows`` along the outer axis, with slicing rules."""
    if isinstance(rows, slice):
        start, stop, step = rows.start, rows.stop, rows.step
    elif isinstance(rows, range):
        start, stop, step = rows.start, rows.stop, rows.step
    elif isinstance(rows, tuple) and len(rows) == 2:
        (start, stop), step = rows, None
    else:
        raise TypeError(f"rows must be a slice, a range or a (start, stop) tuple, "
                        f"got {rows!r}")
    try:
        if step is not None and operator.index(step) != 1:
            raise ValueError(f"rows must have step 1 (a contiguous range), got step {step!r} "
                             f"in {rows!r}")
        start = None if start is None else operator.index(start)
        stop = None if stop is None else operator.index(stop)
    except TypeError:
        raise TypeError(f"rows bounds must be integers or None, got {rows!r}") from None
    if not shape:
        raise ValueError(f"rows={rows!r} needs an array with at least one dimension; this "
                         f"one is 0-d")
    axis = 0 if order == "C" else len(shape) - 1
    lo, hi, _ = slice(start, stop).indices(shape[axis])
    return axis, lo, max(lo, hi)


# -- load -------------------------------------------------------------------------------------

def load(file, mode="r", rows=None, *, compressed="warn", max_header_size=MAX_HEADER_SIZE):
    """Map the array of a ``.npy`` file, or the members of a ``.npz`` archive.

    A ``.npy`` file gives a :class:`~mmarray.Mapping` of its data segment with the header's
    dtype, shape and order (format versions 1.0, 2.0 and 3.0). Only the data is mapped, and
    with ``rows`` only those rows of it, so opening part of a 100 GB file costs what opening
    a small one does. A ``.npz`` archive gives an :class:`~mmarray.NpzMapping` of member name
    to mapping, each uncompressed member mapped in place inside the archive.

    Parameters
    ----------
    file : str, bytes, os.PathLike or file object
        The file. The kind is told by its first bytes (the ``.npy`` magic string or a zip
        signature), not its name. A file object must have ``fileno()``; a ``.npy`` is read
        from its current position, which is then moved past the array data (as ``np.load``
        does). The object is not closed, and a ``.npz`` needs it open while members are
        accessed.
    mode : {'r', 'r+', 'c'}, optional
        ``'r'`` read-only (default); ``'r+'`` read-write, writes reach the file; ``'c'``
        copy-on-write. numpy's long names are accepted. ``'w+'`` is refused: the file exists
        and holds the data (see :func:`create_npy`). No mode grows a file: a file shorter
        than its header says is an error.
    rows : slice, range or (start, stop) tuple, optional
        ``.npy`` only: map only these rows, along the first axis for C order and the last
        axis for Fortran order (elements for 1-D). Python slicing rules for negative and
        out-of-range bounds; the step must be 1. The result's ``shape`` has that axis
        shortened and its ``offset`` is the first row's.
    compressed : {'warn', 'error', 'ignore'}, optional
        ``.npz`` only: what to do about compressed members, which cannot be mapped. ``'warn'``
        (default) emits one :class:`~mmarray.CompressedMemberWarning` per archive and
        decompresses such members into memory when they are accessed; ``'error'`` raises
        ValueError instead; ``'ignore'`` decompresses without warning.
    max_header_size : int, optional
        Largest ``.npy`` header accepted, as in ``np.load`` (default 10000).

    Returns
    -------
    Mapping or NpzMapping

    Raises
    ------
    ValueError
        A malformed file (bad magic, unknown version, truncated header, data past the end
        of the file, a broken zip directory, overlapping members, ...), a dtype holding
        Python objects (``np.load`` needs ``allow_pickle=True`` for those, and they cannot
        be mapped), a bad mode or ``rows`` with a step, or with a ``.npz``.
    TypeError
        ``file`` is neither a path nor a file object, or ``rows`` is not a range.
    OSError
        From the operating system (FileNotFoundError, PermissionError, ...).

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> np.save(path, np.arange(12.0).reshape(4, 3))
    >>> with mmarray.load(path) as m:
    ...     m.shape, m.dtype, m.array[1].tolist()
    ((4, 3), dtype('float64'), [3.0, 4.0, 5.0])
    >>> with mmarray.load(path, rows=slice(-2, None)) as m:   # the last two rows only
    ...     m.shape, m.array.tolist()
    ((2, 3), [[6.0, 7.0, 8.0], [9.0, 10.0, 11.0]])
    """
    if mode == "r":
        access = _READ
    else:
        mode, access = check_load_mode(mode)
    if compressed != "warn" and compressed not in ("error", "ignore"):
        raise ValueError(f"compressed must be 'warn', 'error' or 'ignore', got {compressed!r}")
    if type(file) is str:
        path = file
    elif isinstance(file, (str, bytes, os.PathLike)):
        path = os.fspath(file)
    elif hasattr(file, "fileno"):
        return _load_fileobj(file, mode, access, rows, compressed, max_header_size)
    else:
        raise TypeError(f"file must be a path (str, bytes, os.PathLike) or an object with "
                        f"fileno(), got {type(file).__name__}")
    if not path:
        raise FileNotFoundError(2, "No such file or directory", path)
    fd = os.open(path, _O_READ if access != _engine.WRITE else _O_WRITE)
    try:
        first = os.read(fd, FIRST_READ)
        # Fast path: no rows, a version 1.0 header as numpy writes it, whole in `first`.
        if rows is None and first[:8] == _MAGIC_V1 and len(first) >= 10:
            end = 10 + (first[8] | first[9] << 8)
            hit = None
            if end <= len(first) and end - 10 <= max_header_size:
                hb = first[10:end]
                hit = _header_cache.get(hb) or _parse_fast(hb, repr(path))
            if hit is not None and hit[3]:
                try:
                    return _engine.map_file(fd if _POSIX else _api._os_handle(fd), access, end,
                                            hit[3], 0, hit[0], hit[1], hit[2], mode,
                                            _abspath(path))
                except ValueError:
                    pass  # data past the end of the file: the general path says so
        if first[:6] == MAGIC:
            return _map_npy(fd, 0, first, mode, access, rows, _abspath(path), repr(path),
                            max_header_size)[0]
        return _other(fd, first, path, _abspath(path), repr(path), mode, access, rows,
                      compressed, max_header_size, 4)
    finally:
        os.close(fd)


def _abspath(path):
    """os.path.abspath, remembered for absolute str paths (they do not depend on the cwd)."""
    try:
        return _abspaths[path]
    except (KeyError, TypeError):
        pass
    result = os.path.abspath(path)
    if type(path) is str and os.path.isabs(path):
        if len(_abspaths) >= _CACHE_MAX:
            _abspaths.clear()
        _abspaths[path] = result
    return result


def _load_fileobj(file, mode, access, rows, compressed, max_header_size):
    try:
        fd = file.fileno()
    except (OSError, ValueError) as exc:  # io.UnsupportedOperation: BytesIO and friends
        raise TypeError(f"file must be a path or a file object with a working fileno() (an OS "
                        f"file to map), got {type(file).__name__}: {exc}") from None
    if access == _engine.WRITE and not getattr(file, "writable", lambda: True)():
        raise ValueError(f"mode 'r+' needs a file object open for writing, got {file!r}")
    if hasattr(file, "flush") and getattr(file, "writable", lambda: False)():
        file.flush()  # buffered writes must reach the file before it is read and mapped
    base = file.tell() if hasattr(file, "tell") else 0
    first = read_at(fd, base, FIRST_READ)
    name = getattr(file, "name", None)
    name = repr(name) if isinstance(name, (str, bytes)) else repr(file)
    if first[:6] == MAGIC:
        m, end = _map_npy(fd, base, first, mode, access, rows, None, name, max_header_size)
        if hasattr(file, "seek"):
            file.seek(end)
        return m
    return _other(fd, first, file, None, name, mode, access, rows, compressed,
                  max_header_size, 5)


def _other(fd, first, target, filename, name, mode, access, rows, compressed,
           max_header_size, stacklevel):
    """Not a .npy: an .npz (``stacklevel`` locates the caller of `load` for warnings)."""
    if first[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if rows is not None:
            raise ValueError(f"rows={rows!r} applies to .npy files; {name} is a .npz archive "
                             f"(select a member, then slice its array)")
        return _npz.load_npz(fd, first, target, filename, name, mode, access, compressed,
                             max_header_size, stacklevel)
    if len(first) < 6 and MAGIC.startswith(first):
        raise ValueError(f"{name}: truncated .npy: {len(first)} bytes, fewer than the 6-byte "
                         f"magic string {MAGIC!r}")
    hint = " (a pickle: np.load reads it only with allow_pickle=True; it cannot be mapped)" \
        if first[:1] == b"\x80" else ""
    raise ValueError(f"{name}: neither a .npy file (magic {MAGIC!r}) nor a .npz archive "
                     f"(zip signature b'PK\\x03\\x04'): starts with {first[:8]!r}{hint}")


def _map_npy(fd, base, first, mode, access, rows, filename, name, max_header_size):
    hlen, dt, shape, order, nbytes = parse_header(
        first, lambda pos, n: read_at(fd, base + pos, n), None, name, max_header_size)
    offset = base + hlen
    if rows is None:
        if nbytes == 0:
            m = _engine.map_file(None, access, offset, 0, 0, dt, shape, order, mode, filename)
        else:
            try:
                m = _engine.map_file(_api._os_handle(fd), access, offset, nbytes, 0, dt,
                                     shape, order, mode, filename)
            except ValueError:  # E_RANGE: the data runs past the end of the file
                _check_size(fd, offset, nbytes, dt, shape, name)
                raise
    else:
        axis, lo, hi = row_bounds(rows, shape, order)
        _check_size(fd, offset, nbytes, dt, shape, name)
        per = nbytes // shape[axis] if shape[axis] else 0
        sub = shape[:axis] + (hi - lo,) + shape[axis + 1:]
        length = (hi - lo) * per
        if length == 0:
            m = _engine.map_file(None, access, offset + lo * per, 0, 0, dt, sub, order, mode,
                                 filename)
        else:
            m = _engine.map_file(_api._os_handle(fd), access, offset + lo * per, length, 0,
                                 dt, sub, order, mode, filename)
    return m, offset + nbytes


def _check_size(fd, offset, nbytes, dt, shape, name):
    size = os.fstat(fd).st_size
    if offset + nbytes > size:
        raise ValueError(
            f"{name}: the header says {shape} x {dt} = {nbytes} bytes of data from offset "
            f"{offset}, but the file has only {max(size - offset, 0)} bytes there "
            f"({size} in all): truncated or corrupt .npy")


# -- create -----------------------------------------------------------------------------------

def header_bytes(dtype, shape, fortran_order):
    """The complete .npy header (magic to newline) numpy writes for this array."""
    buf = io.BytesIO()
    _np_write_array_header(buf, {"descr": _format.dtype_to_descr(dtype),
                                 "fortran_order": fortran_order, "shape": shape}, None)
    return buf.getvalue()


def temp_sibling(path):
    """Create a new empty file next to ``path``; return (fd, temp path)."""
    directory, base = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(17, "cannot create a temporary file next to", path)  # pragma: no cover


def replace_target(file):
    """Resolve where a new file for ``file`` goes: (path to replace, mode bits or None)."""
    path = os.fspath(file)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise FileNotFoundError(2, "No such file or directory", path)
    if os.path.islink(path):
        path = os.path.realpath(path)  # replace the file the link points at, not the link
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path, None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(21, "Is a directory", path)
    return path, stat.S_IMODE(st.st_mode)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def create_npy(file, dtype, shape, fortran_order=False):
    """Create a ``.npy`` file and map its data writable (numpy's ``open_memmap(mode='w+')``).

    The header is written with ``numpy.lib.format`` (the oldest version that can hold it),
    the data segment is preallocated (real blocks where the filesystem can, so a full disk
    fails here rather than on a later write) and mapped in mode ``'w+'``; the data starts
    zeroed. The file is built under a temporary name next to ``file`` and renamed over it
    once mapped, so a failure leaves no file behind (and an existing file untouched), and
    mappings of a file being replaced stay valid (they keep the old file's data).

    Parameters
    ----------
    file : str, bytes or os.PathLike
        Where to create the file (an existing file is replaced; its permission bits are kept).
    dtype : data-type
        Element type; dtypes holding Python objects cannot be mapped.
    shape : int or tuple of int
        Array shape.
    fortran_order : bool, optional
        Store in Fortran (column-major) order.

    Returns
    -------
    Mapping
        In mode ``'w+'``; ``np.load`` reads the file (after :meth:`~Mapping.flush`, or at
        once on systems with a unified page cache).

    Raises
    ------
    TypeError
        A dtype holding objects or of itemsize 0, a shape not made of integers, a file
        object instead of a path, or a non-bool ``fortran_order``.
    ValueError
        A negative dimension or a size that overflows 64 bits.
    OSError
        From the operating system (the directory does not exist, disk full, ...).

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "new.npy")
    >>> with mmarray.create_npy(path, "int16", (2, 3)) as m:
    ...     m.array[:] = [[1, 2, 3], [4, 5, 6]]
    ...     m.flush()
    >>> np.load(path).tolist()
    [[1, 2, 3], [4, 5, 6]]
    """
    if not isinstance(file, (str, bytes, os.PathLike)):
        raise TypeError(f"file must be a path (str, bytes, os.PathLike), got "
                        f"{type(file).__name__}; create_npy creates the file itself")
    if not isinstance(fortran_order, (bool, np.bool_)):
        raise TypeError(f"fortran_order must be a bool, got {fortran_order!r}")
    fortran_order = bool(fortran_order)
    dt = _api._check_dtype(dtype)
    if dt.subdtype is not None:  # as ndarray does: the subarray becomes trailing axes
        dt, sub = dt.subdtype
        shape, _ = _api._check_shape(shape, 1)  # any integer (np.int64 too) or ints
        shape = shape + sub
        dt = _api._check_dtype(dt)
    shape, nbytes = _api._check_shape(shape, dt.itemsize)
    header = header_bytes(dt, shape, fortran_order)
    path, perms = replace_target(file)
    filename = os.path.abspath(path)
    order = "F" if fortran_order else "C"
    fd, tmp = temp_sibling(path)
    m = None
    try:
        if perms is not None:
            os.chmod(tmp, perms)
        write_all(fd, header)
        if nbytes:
            m = _engine.map_file(_api._os_handle(fd), _engine.WRITE, len(header), nbytes,
                                 _engine.GROW, dt, shape, order, "w+", filename)
        else:
            m = _engine.map_file(None, _engine.WRITE, len(header), 0, 0, dt, shape, order,
                                 "w+", filename)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if m is not None:
            m.close()
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return m


from mmarray import _npz  # noqa: E402  (circular: _npz uses this module's header reader)
