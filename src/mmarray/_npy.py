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

import errno
import io
import operator
import os
import re
import stat

import numpy as np
from numpy.lib import format as _format

from mmarray._mapping import Mapping as _Mapping
from mmarray import _api, _engine

try:  # numpy >= 2.0 keeps the implementation in a private module
    from numpy.lib._format_impl import _read_array_header as _np_read_array_header
    from numpy.lib._format_impl import _write_array_header as _np_write_array_header
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.lib.format import _read_array_header as _np_read_array_header
    from numpy.lib.format import _write_array_header as _np_write_array_header

__all__ = ["load", "create_npy"]


def _map_file(*args):
    """The engine's map_file with the public Mapping as the class (until the npy/npz split
    routes every map through mmarray._mapping.map_region)."""
    if len(args) == 10:
        args += (_Mapping,)
    return _engine.map_file(*args)

MAGIC = b"\x93NUMPY"
_MAGIC_V1 = MAGIC + b"\x01\x00"
#: Bytes read at open: the magic, the header and usually all of a small .npz's directory.
FIRST_READ = 4096
#: numpy's default limit on the header length (``np.load(max_header_size=...)``).
MAX_HEADER_SIZE = 10000
_INTP_MAX = int(np.iinfo(np.intp).max)  # the largest dimension numpy can make an array of
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
_O_READ = os.O_RDONLY | _O_BINARY
_O_WRITE = os.O_RDWR | _O_BINARY
_POSIX = os.name != "nt"
_READ = _engine.READ

# mode -> (access, normalized mode). 'w+' is refused by _check_mode (an existing file's data).
_LOAD_MODES = {"r": _engine.READ, "r+": _engine.WRITE, "c": _engine.COPY}
_MODE_ALIASES = {"readonly": "r", "readwrite": "r+", "copyonwrite": "c"}

# At most 20 digits (2**64 has 20): a longer integer goes to numpy's parser, whose errors
# (Python's limit on digits in int(), for one) get the file's name; int() never sees it here.
_INT = rb"(?:0|[1-9][0-9]{0,19})"
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
    """Bytes of data for ``shape``; ValueError for a shape numpy cannot make an array of.

    numpy needs every dimension, and the product of the nonzero ones times the itemsize, to
    fit its index type (so ``(0, 2**70)`` is refused although it holds no data).
    """
    n = span = itemsize
    for d in shape:
        if d < 0 or d > _INTP_MAX:
            what = "negative" if d < 0 else f"above {_INTP_MAX}, the largest numpy allows"
            raise ValueError(f"{name}: header shape {_api._short_repr(shape)} has dimension "
                             f"{_api._short_repr(d)}, {what}; expected sizes from 0 to "
                             f"{_INTP_MAX}")
        n *= d
        span *= d or 1
    if n > _INTP_MAX:
        raise ValueError(f"{name}: header shape {_api._short_repr(shape)} of itemsize "
                         f"{itemsize} is {_api._short_repr(n)} bytes, more than any file can "
                         f"hold (or numpy can index: at most {_INTP_MAX})")
    if span > _INTP_MAX:
        raise ValueError(f"{name}: header shape {_api._short_repr(shape)} of itemsize "
                         f"{itemsize} spans {_api._short_repr(span)} bytes (its nonzero "
                         f"dimensions), more than numpy allows for an array ({_INTP_MAX})")
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
        raise ValueError(f"{name}: {_clipped(exc)}") from exc
    except Exception as exc:  # literal_eval's RecursionError, MemoryError, ...: a bad header
        raise ValueError(f"{name}: cannot parse the .npy header ({type(exc).__name__}: "
                         f"{_clipped(exc)})") from exc
    _checked_dtype(dt, name)
    if not all(type(d) is int for d in shape):  # numpy's check lets bools through
        raise ValueError(f"{name}: header shape {_api._short_repr(shape)} is not a tuple of "
                         f"integers")
    return dt, shape, "F" if fortran else "C", _nbytes(shape, dt.itemsize, name)


def _clipped(exc, limit=300):
    """``exc``'s message, bounded, with its cause's: numpy's "Cannot parse header" quotes the
    whole header (up to max_header_size) and leaves the reason in ``__cause__``."""
    def clip(text):
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    text = clip(str(exc))
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {clip(str(exc.__cause__))})"
    return text


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
        than its header says is an error. For a ``.npz``, ``'r+'`` reads each member once
        when it is first opened, to verify its CRC-32 (see :class:`~mmarray.NpzMapping`).
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
        A malformed file (bad magic, unknown version, truncated header, a shape numpy
        cannot make, data past the end of the file, a broken zip directory, overlapping
        members, ...), a dtype holding Python objects (``np.load`` needs
        ``allow_pickle=True`` for those, and they cannot be mapped), a bad mode or ``rows``
        with a step, or with a ``.npz``, a path holding a null byte, or a file object whose
        ``fileno()`` is a negative or too large int.
    TypeError
        ``file`` is neither a path nor a file object whose ``fileno()`` gives an int, or
        ``rows`` is not a range.
    OSError
        From the operating system (FileNotFoundError, PermissionError, EBADF for a file
        object whose descriptor is closed, ...).

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
    try:
        fd = os.open(path, _O_READ if access != _engine.WRITE else _O_WRITE)
    except ValueError:
        check_path(path)  # a null byte: say so with the path
        raise
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
                    return _map_file(fd if _POSIX else _api._os_handle(fd), access, end,
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
    fd = _api.fileno_of(file)  # checked before anything is read or written
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
            m = _map_file(None, access, offset, 0, 0, dt, shape, order, mode, filename)
        else:
            try:
                m = _map_file(_api._os_handle(fd), access, offset, nbytes, 0, dt,
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
            m = _map_file(None, access, offset + lo * per, 0, 0, dt, sub, order, mode,
                                 filename)
        else:
            m = _map_file(_api._os_handle(fd), access, offset + lo * per, length, 0,
                                 dt, sub, order, mode, filename)
    return m, offset + nbytes


def _check_size(fd, offset, nbytes, dt, shape, name):
    size = os.fstat(fd).st_size
    if offset + nbytes > size:
        raise ValueError(
            f"{name}: the header says {_api._short_repr(shape)} x {dt} = {nbytes} bytes of "
            f"data from offset {offset}, but the file has only {max(size - offset, 0)} bytes "
            f"there ({size} in all): truncated or corrupt .npy")


# -- create -----------------------------------------------------------------------------------

def header_bytes(dtype, shape, fortran_order):
    """The complete .npy header (magic to newline) numpy writes for this array."""
    buf = io.BytesIO()
    _np_write_array_header(buf, {"descr": _format.dtype_to_descr(dtype),
                                 "fortran_order": fortran_order, "shape": shape}, None)
    return buf.getvalue()


_TEMP_SUFFIX = ".mmarray-tmp"
# What follows ".{base}." in a temporary's name: the writer's pid, 12 hex digits, the suffix.
_TEMP_TAIL = re.compile(r"([1-9][0-9]{0,9})\.[0-9a-f]{12}" + re.escape(_TEMP_SUFFIX))
_PID_MAX = 2**31 - 1  # pid_t


def temp_sibling(path):
    """Create a new empty hidden file next to ``path``; return (fd, temp path).

    Its name is ``.{base}.{pid}.{12 hex digits}.mmarray-tmp``; temporaries for the same
    ``path`` left by processes that are gone are removed first (see `_remove_stale_temps`).
    """
    directory, base = os.path.split(path)
    _remove_stale_temps(directory, base)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(6).hex()}"
                                      f"{_TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(17, "cannot create a temporary file next to", path)  # pragma: no cover


def _remove_stale_temps(directory, base):
    """Remove the temporaries for ``base`` whose writer (the pid in the name) is gone.

    A writer killed between creating its temporary and renaming it leaves the file behind.
    Only regular files named as `temp_sibling` names them for this very ``base`` are
    considered, and one is removed only when ``os.kill(pid, 0)`` says no such process exists
    on this host; anything else (a live pid, another user's process, an unreadable
    directory) is left alone. POSIX only: on Windows ``os.kill`` would terminate the process.
    """
    if not _POSIX:
        return
    prefix = f".{base}."
    try:
        with os.scandir(directory or ".") as entries:
            stale = [(e.path, int(m.group(1))) for e in entries
                     if e.name.startswith(prefix) and e.name.endswith(_TEMP_SUFFIX)
                     and (m := _TEMP_TAIL.fullmatch(e.name, len(prefix))) is not None
                     and e.is_file(follow_symlinks=False)]
    except OSError:
        return
    for tmp, pid in stale:
        if pid > _PID_MAX or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
        except ProcessLookupError:
            try:
                os.unlink(tmp)
            except OSError:  # removed by another writer meanwhile, or not ours to remove
                pass
        except OSError:  # PermissionError: alive, another user's
            pass


def fsync_directory(path):
    """fsync the directory holding ``path``, so that a rename into it survives a power loss.

    POSIX only (Windows cannot open a directory for this); skipped where the directory
    cannot be opened for reading or its filesystem does not support fsync on it.
    """
    if not _POSIX:
        return
    try:
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def replace_durably(tmp, path):
    """Rename the (already fsynced) temporary ``tmp`` over ``path`` and fsync the directory.

    With the data synced before and the directory entry after, a crash or power loss leaves
    either the old file or the complete new one at ``path``, never an empty or partial one.
    """
    os.replace(tmp, path)
    fsync_directory(path)


def discard(tmp):
    """Remove a temporary file after a failure (quietly: the failure is what is reported)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def check_path(path):
    """ValueError naming ``path`` if it holds a null byte (no file name can)."""
    if ("\0" if isinstance(path, str) else b"\0") in path:
        raise ValueError(f"path {_api._short_repr(path)} contains a null byte (\\0); a file "
                         f"name cannot hold one")


def replace_target(file):
    """Resolve where a new file for ``file`` goes: (path to replace, mode bits or None)."""
    path = os.fspath(file)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    check_path(path)
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
    zeroed. The file is built under a hidden temporary name next to ``file`` and renamed
    over it once mapped, so a failure leaves no file behind (and an existing file untouched),
    and mappings of a file being replaced stay valid (they keep the old file's data). The
    header is fsynced before the rename and the directory after it, so a crash or power loss
    leaves the old file or the new one, never an empty one; the data pages are written by
    :meth:`~Mapping.flush`. Temporaries that a killed writer left for the same ``file`` are
    removed (only those whose process is gone).

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
        A negative dimension, a size that overflows 64 bits, or a path holding a null byte.
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
            m = _map_file(_api._os_handle(fd), _engine.WRITE, len(header), nbytes,
                                 _engine.GROW, dt, shape, order, "w+", filename)
        else:
            m = _map_file(None, _engine.WRITE, len(header), 0, 0, dt, shape, order,
                                 "w+", filename)
        os.fsync(fd)  # the header (and the allocation); the data is the caller's to flush
        os.close(fd)
        fd = -1
        replace_durably(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if m is not None:
            m.close()
        discard(tmp)
        raise
    return m


from mmarray import _npz  # noqa: E402  (circular: _npz uses this module's header reader)
