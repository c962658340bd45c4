"""The ``.npy`` format, low level: header parsing and writing, row ranges, file I/O helpers,
temporary files replaced durably, and the one call into the engine that maps a region.

Used by both the ``.npy`` side (``_npy``) and the ``.npz`` side (``_npz``, ``_npzcrc``,
``_npzwrite``); imports nothing of theirs.

Header parsing
--------------
numpy's parser (``numpy.lib.format.read_array_header_1_0`` and ``_2_0``, built on
``ast.literal_eval``) costs about 19 us per header, several times what mapping the data
costs. Headers that numpy itself wrote -- ``{'descr': '<f8', 'fortran_order': False, 'shape':
(3, 4), }`` with a plain string descr -- are therefore parsed by one anchored regular
expression (well under 1 us) and remembered by their exact bytes. Every other header
(structured dtypes, Python 2 era headers, anything unusual) goes to numpy's parser, which
stays the reference: the tests check that both agree. numpy has public readers and writers
for versions 1.0 and 2.0 only; those for 3.0 (`read_array_header_3_0`, `_header_3_0`) are
numpy's own steps, and the tests hold them to numpy's private functions.
"""
from __future__ import annotations

import ast
import errno
import hashlib
import io
import operator
import os
import re
import stat
import time
from typing import Any, Callable

import numpy as np
from numpy.lib import format as _format

from mmarray import _api, _engine, _fileref
from mmarray._mapping import Mapping as _Mapping
from mmarray._mapping import map_region as _map_region
from mmarray._warn import warn_at_caller

_fcntl: Any
try:
    import fcntl as _fcntl
except ImportError:  # pragma: no cover - Windows
    _fcntl = None

MAGIC = _format.MAGIC_PREFIX  # b"\x93NUMPY"
MAGIC_V1 = _format.magic(1, 0)
#: Bytes read at open: the magic, the header and usually all of a small .npz's directory.
FIRST_READ = 4096
#: numpy's default limit on the header length (``np.load(max_header_size=...)``).
MAX_HEADER_SIZE = 10000
#: Bytes per read or write of bulk data (CRC-32 passes, archive writing).
CHUNK = 64 << 20
_INTP_MAX = int(np.iinfo(np.intp).max)  # the largest dimension numpy can make an array of
_MAX_DIMS = _engine._MAX_DIMS  # the most dimensions an array may have (numpy 2's NPY_MAXDIMS)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation
O_READ = os.O_RDONLY | _O_BINARY
O_WRITE = os.O_RDWR | _O_BINARY
POSIX = os.name != "nt"

# At most 20 digits (2**64 has 20): a longer integer goes to numpy's parser, whose errors
# (Python's limit on digits in int(), for one) get the file's name; int() never sees it here.
_INT = rb"(?:0|[1-9][0-9]{0,19})"
# Exactly what numpy writes for a plain-string descr; anything else goes to numpy's parser.
_HEADER_RE = re.compile(
    rb"\{'descr': '([^'\\\x00-\x1f\x7f-\xff]*)', 'fortran_order': (True|False), "
    rb"'shape': \((" + _INT + rb"(?:, " + _INT + rb")+|" + _INT + rb",|)\), \} *\n?")
header_cache: dict = {}  # header bytes -> (dtype, shape, order, nbytes), for regex hits only
_descr_cache: dict = {}   # descr bytes -> checked dtype
CACHE_MAX = 512

if hasattr(os, "pread"):
    _pread = os.pread
else:  # pragma: no cover - Windows
    def _pread(fd, n, offset):
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)


def read_at(fd: int, offset: int, n: int) -> bytes:
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


def write_all(fd: int, data: Any) -> None:
    """Write all of ``data`` at the descriptor's position."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


if hasattr(os, "pwrite"):
    def pwrite(fd: int, data: bytes, pos: int) -> None:
        """Write the (small) ``data`` at ``pos``."""
        if os.pwrite(fd, data, pos) != len(data):  # pragma: no cover - a few bytes
            raise OSError(f"short write of {len(data)} bytes at offset {pos}")
else:  # pragma: no cover - Windows
    def pwrite(fd: int, data: bytes, pos: int) -> None:
        """Write the (small) ``data`` at ``pos``."""
        os.lseek(fd, pos, os.SEEK_SET)
        write_all(fd, data)


def appends(file, fd):
    """True if every write to the file object ``file`` (descriptor ``fd``, or None) goes to
    the end of the file: opened in append mode, or its descriptor has O_APPEND (then Linux's
    pwrite ignores the offset it is given). A positioned write there would land at the end.
    """
    mode = getattr(file, "mode", None)
    if isinstance(mode, str) and "a" in mode:
        return True
    return (fd is not None and _fcntl is not None
            and bool(_fcntl.fcntl(fd, _fcntl.F_GETFL) & os.O_APPEND))


# -- mapping ----------------------------------------------------------------------------------

def map_region(fd, access, offset, nbytes, dtype, shape, order, mode, filename, cls=None,
               grow=False):
    """Map ``nbytes`` at ``offset`` of the open descriptor ``fd`` as a ``cls`` (a Mapping).

    The one call into the engine's entry point for the .npy/.npz code. ``nbytes`` 0 gives an
    empty mapping (no OS call; ``fd`` is not used and may be None). ``grow`` extends the file
    to ``offset + nbytes`` first (preallocated). ``filename`` is the absolute path the mapping
    reports, or None. ValueError if the file is shorter than ``offset + nbytes`` (without
    ``grow``).
    """
    if nbytes == 0:
        fd = None  # an empty mapping: no OS call
    return _map_region(fd=fd, access=access, offset=offset, length=nbytes,
                       flags=_engine.GROW if grow else 0, dtype=dtype, shape=shape,
                       order=order, mode=mode, filename=filename,
                       cls=_Mapping if cls is None else cls)


# -- header -----------------------------------------------------------------------------------

def _checked_dtype(dt, name):
    if dt.hasobject:
        raise ValueError(
            f"{name}: dtype {dt} holds Python objects, which .npy stores pickled; numpy loads "
            f"such data only with allow_pickle=True, and it cannot be memory-mapped")
    return dt  # itemsize 0 too ('V0', np.dtype([])): numpy saves and loads such arrays


def _whole_shape(dt, shape, name):
    """``(dtype, shape)`` of the array np.load gives for a header's descr and shape: a
    subarray descr such as ``('<i4', (2,))`` (numpy never writes one, np.load reads it) gives
    its base dtype, its dimensions after the header's shape."""
    try:
        return _engine.without_subarray(dt, shape)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


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
    if dt.names is None:  # a dtype with fields is mutable (dtype.names = ...): never shared
        if len(_descr_cache) >= CACHE_MAX:
            _descr_cache.clear()
        _descr_cache[descr] = dt
    return dt


def _nbytes(shape: tuple[int, ...], itemsize: int, name: str) -> int:
    """Bytes of data for ``shape``; ValueError for a shape numpy cannot make an array of.

    numpy needs every dimension, and the product of the nonzero ones times the itemsize, to
    fit its index type (so ``(0, 2**70)`` is refused although it holds no data).
    """
    n = span = itemsize  # numpy's bound: an itemsize of 0 spans nothing
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


def parse_fast(hb, name):
    """Parse a header numpy wrote, or return None."""
    m = _HEADER_RE.fullmatch(hb)
    if m is None:
        return None
    descr, fortran, dims = m.groups()
    dt = _descr_cache.get(descr)
    if dt is None:
        dt = _descr_dtype(descr, name)
    # dims as the expression matched them: 'N,' (1-D), 'N, M, ...' or '' (0-D)
    if dims[-1:] == b",":
        shape = (int(dims[:-1]),)
    elif dims:
        shape = tuple([int(d) for d in dims.split(b", ")])
    else:
        shape = ()
    if len(shape) > _MAX_DIMS:
        raise _too_many_dimensions(shape, name)
    order = "F" if fortran == b"True" else "C"
    nbytes = dt.itemsize
    for d in shape:
        nbytes *= d
    if not 0 < nbytes <= _INTP_MAX:  # else every dimension is 1 to nbytes: nothing to check
        nbytes = _nbytes(shape, dt.itemsize, name)  # no data, or too much: checked there
    if dt.subdtype is not None:
        dt, shape = _whole_shape(dt, shape, name)
    result = (dt, shape, order, nbytes)
    if dt.names is None:  # see _descr_dtype: each file's fields dtype its own
        if len(header_cache) >= CACHE_MAX:
            header_cache.clear()
        header_cache[hb] = result
    return result


def _too_many_dimensions(shape, name):
    return ValueError(f"{name}: header shape has {len(shape)} dimensions, more than "
                      f"{_MAX_DIMS}, the most numpy allows")


def read_array_header_3_0(fp: Any, max_header_size: int = MAX_HEADER_SIZE) -> tuple[Any, bool, Any]:
    """Read a version 3.0 header from the file object ``fp`` (positioned after the magic), as
    numpy's ``read_array_header_1_0``/``_2_0`` read theirs: ``(shape, fortran_order, dtype)``.

    numpy has no public reader for 3.0, whose header is UTF-8 (for non-latin-1 field names)
    with a 4-byte length; this is numpy's reader for it, step for step and with its messages
    (the tests hold the two to the same results). Version 3.0 headers never went through
    Python 2, so there is no ``L`` suffix to filter.
    """
    hlen = int.from_bytes(_read_exactly(fp, 4, "array header length"), "little")
    header = _read_exactly(fp, hlen, "array header").decode("utf-8")
    if len(header) > max_header_size:
        raise ValueError(
            f"Header info length ({len(header)}) is large and may not be safe to load "
            "securely.\nTo allow loading, adjust `max_header_size` or fully trust the `.npy` "
            "file using `allow_pickle=True`.\nFor safety against large resource use or "
            "crashes, sandboxing may be necessary.")
    try:
        d = ast.literal_eval(header)
    except SyntaxError as exc:
        raise ValueError(f"Cannot parse header: {header!r}") from exc
    if not isinstance(d, dict):
        raise ValueError(f"Header is not a dictionary: {d!r}")
    if _format.EXPECTED_KEYS != d.keys():
        raise ValueError(f"Header does not contain the correct keys: {sorted(d.keys())!r}")
    shape, fortran_order = d["shape"], d["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(x, int) for x in shape):
        raise ValueError(f"shape is not valid: {shape!r}")
    if not isinstance(fortran_order, bool):
        raise ValueError(f"fortran_order is not a valid bool: {fortran_order!r}")
    try:
        dtype = _format.descr_to_dtype(d["descr"])
    except TypeError as exc:
        raise ValueError(f"descr is not a valid dtype descriptor: {d['descr']!r}") from exc
    return shape, fortran_order, dtype


def _read_exactly(fp, n, what):
    data = fp.read(n)
    if len(data) != n:
        raise ValueError(f"EOF: reading {what}, expected {n} bytes got {len(data)}")
    return data


_READERS: dict[tuple[int, int], Any] = {
    (1, 0): _format.read_array_header_1_0,
    (2, 0): _format.read_array_header_2_0,
    (3, 0): read_array_header_3_0,
}


def _parse_numpy(raw, version, name, max_header_size):
    """Parse with numpy's reader; ``raw`` starts at the header-length field."""
    try:
        shape, fortran, dt = _READERS[version](io.BytesIO(raw),
                                               max_header_size=max_header_size)
    except ValueError as exc:
        raise ValueError(f"{name}: {_clipped(exc)}") from exc
    except Exception as exc:  # literal_eval's RecursionError, MemoryError, ...: a bad header
        raise ValueError(f"{name}: cannot parse the .npy header ({type(exc).__name__}: "
                         f"{_clipped(exc)})") from exc
    _checked_dtype(dt, name)
    if len(shape) > _MAX_DIMS:
        raise _too_many_dimensions(shape, name)
    if not all(type(d) is int for d in shape):  # numpy's check lets bools through
        raise ValueError(f"{name}: header shape {_api._short_repr(shape)} is not a tuple of "
                         f"integers")
    nbytes = _nbytes(shape, dt.itemsize, name)
    dt, shape = _whole_shape(dt, shape, name)
    return dt, shape, "F" if fortran else "C", nbytes


def _clipped(exc, limit=300):
    """``exc``'s message, bounded, with its cause's: numpy's "Cannot parse header" quotes the
    whole header (up to max_header_size) and leaves the reason in ``__cause__``."""
    def clip(text):
        return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
    text = clip(str(exc))
    if exc.__cause__ is not None:
        text += f" ({type(exc.__cause__).__name__}: {clip(str(exc.__cause__))})"
    return text


def parse_header(first: bytes, read: Callable[[int, int], bytes], limit: int | None, name: str,
                 max_header_size: int = MAX_HEADER_SIZE
                 ) -> tuple[int, np.dtype[Any], tuple[int, ...], str, int]:
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
    if major == 3 and hlen > max_header_size:
        # numpy counts the characters of a version 3.0 header (UTF-8), not its bytes
        try:
            chars = len(hb.decode("utf-8"))
        except UnicodeDecodeError:
            chars = 0  # not UTF-8: numpy's reader says so below
        if chars > max_header_size:
            raise ValueError(
                f"{name}: header of {chars} characters exceeds max_header_size="
                f"{max_header_size}; large headers may not be safe to load (pass a larger "
                f"max_header_size if you trust the file)")
    hit = header_cache.get(hb)
    if hit is None:
        hit = parse_fast(hb, name)
        if hit is None:
            hit = _parse_numpy(first[8:end], (major, minor), name, max_header_size)
    dt, shape, order, nbytes = hit
    return end, dt, shape, order, nbytes


# -- references (pickles) of .npy data ---------------------------------------------------------
# A reference carries the .npy header that located its data (see _fileref.read_layout). Both
# checks below accept a header whose shape changed along the growth axis only (append_npy,
# NpyMapping.resize): the data did not move. They cannot tell that from the file rewritten in
# place with a longer array of the same dtype and other dimensions.

def _parsed_header(header: bytes) -> tuple[int, np.dtype[Any], tuple[int, ...], str, int] | None:
    try:
        return parse_header(header, lambda pos, n: b"", len(header), "header",
                            max(len(header), MAX_HEADER_SIZE))
    except ValueError:
        return None


def _places(start: int, header: tuple[int, np.dtype[Any], tuple[int, ...], str, int],
            dt: np.dtype[Any], shape: tuple[int, ...], order: str, data_start: int,
            mapped_end: int) -> str | None:
    """None if the parsed ``header`` (of the .npy at ``start``) has its data from byte
    ``data_start``, of dtype ``dt`` and order ``order``, with the dimensions of ``shape``
    but along the growth axis, up to at least ``mapped_end``; else what differs."""
    hlen, dt2, shape2, order2, nbytes2 = header
    if (start + hlen, dt2, order2) != (data_start, dt, order):
        return (f"its .npy header says {dt2}, order {order2}, data from byte {start + hlen}; "
                f"expected {dt}, order {order}, data from byte {data_start}")
    keep = slice(1, None) if order == "C" else slice(None, -1)
    if len(shape) != len(shape2) or shape[keep] != shape2[keep]:
        return f"its .npy header says shape {shape2}, not one of {shape} grown or shrunk"
    end = start + hlen + nbytes2
    if mapped_end > end:
        return (f"its .npy header says shape {shape2}, whose data ends at byte {end}, before "
                f"the end of the mapped range (byte {mapped_end})")
    return None


def _same_layout(mapping: Any, start: int, pickled: bytes, now: bytes) -> str | None:
    """The receiver's check (``_fileref.HEADER_CHECKS``): the header ``now`` at ``start``
    places the data where the ``pickled`` one did and covers what ``mapping`` maps."""
    old, new = _parsed_header(pickled), _parsed_header(now)
    if old is None or new is None:
        return "its .npy header is not the one pickled, nor one that can be read"
    return _places(start, new, old[1], old[2], old[3], start + old[0],
                   mapping.offset + mapping.nbytes)


def _describes(mapping: Any, start: int, header: bytes) -> str | None:
    """The sender's check (``_fileref.HEADER_DESCRIBES``): the header read now at ``start``
    (the span up to the data) places the data where ``mapping`` maps it, as it did when the
    file was loaded. Without it, a file rewritten in place between the load and the first
    pickle would send the new header with the old range."""
    parsed = _parsed_header(header)
    if parsed is None:
        return (f"its first {len(header)} bytes, where the mapped data starts, are no longer a "
                f"whole .npy header")
    return _places(start, parsed, mapping.dtype, mapping.shape, mapping.order,
                   start + len(header), mapping.offset + mapping.nbytes)


_fileref.HEADER_CHECKS[MAGIC] = _same_layout
_fileref.HEADER_DESCRIBES["npy"] = _describes


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


# -- writing ----------------------------------------------------------------------------------

def header_bytes(d: dict[str, Any]) -> bytes:
    """The complete .npy header (magic to newline) numpy writes for the header dict ``d``
    (``descr``, ``fortran_order``, ``shape``), in the oldest format version that holds it.

    As ``np.save`` chooses: 1.0 unless the header is longer than its 16-bit length field
    allows or not latin-1, then 2.0 (4-byte length), then 3.0 (UTF-8), with numpy's warning
    for either. numpy's public writers give the 1.0 and 2.0 bytes; `_header_3_0` the 3.0 ones.
    """
    buf = io.BytesIO()
    try:
        _format.write_array_header_1_0(buf, d)
        return buf.getvalue()
    except ValueError:  # too long for 1.0, or not latin-1 (UnicodeEncodeError)
        pass
    buf = io.BytesIO()
    try:
        _format.write_array_header_2_0(buf, d)
    except UnicodeEncodeError:
        header = _header_3_0(d)
        message = "Stored array in format 3.0. It can only be read by NumPy >= 1.17"
    else:
        header = buf.getvalue()
        message = "Stored array in format 2.0. It can only beread by NumPy >= 1.9"  # numpy's
    warn_at_caller(message, UserWarning)  # the caller of create_npy, save_npz, open_memmap
    return header


def _header_3_0(d: dict[str, Any]) -> bytes:
    """The 3.0 header numpy writes for ``d``: its 2.0 header, but UTF-8 (numpy has no public
    writer for 3.0)."""
    text = "{" + "".join(f"'{key}': {value!r}, " for key, value in sorted(d.items())) + "}"
    shape = d["shape"]
    if shape:  # spare room for the growing axis, as numpy leaves (to append in place)
        text += " " * (_format.GROWTH_AXIS_MAX_DIGITS
                       - len(repr(shape[-1 if d["fortran_order"] else 0])))
    raw = text.encode("utf-8")
    hlen = len(raw) + 1  # and the newline
    pad = _format.ARRAY_ALIGN - (_format.MAGIC_LEN + 4 + hlen) % _format.ARRAY_ALIGN
    if hlen + pad > 0xFFFFFFFF:
        raise ValueError(f"Header length {hlen} too big for version=(3, 0)")
    return _format.magic(3, 0) + (hlen + pad).to_bytes(4, "little") + raw + b" " * pad + b"\n"


# -- temporary files, replaced durably --------------------------------------------------------

_TEMP_SUFFIX = ".mmarray-tmp"
# What follows ".{base}." in a temporary's name: the writer's pid, 12 hex digits, the suffix.
_TEMP_TAIL = re.compile(r"([1-9][0-9]{0,9})\.[0-9a-f]{12}" + re.escape(_TEMP_SUFFIX))
_PID_MAX = 2**31 - 1  # pid_t
#: Seconds a directory's listing of temporaries is reused by `_remove_stale_temps`: listing
#: it for every write made writing the n-th file into a directory cost O(n) (5 ms per write
#: with 10,000 files there), so writing a dataset of many small files, O(n^2).
STALE_SCAN_EVERY = 60.0
# Absolute directory -> (time.monotonic() of its listing, [(name, path)] of the files there
# named as temporaries are then).
_temps_listed: dict[str, tuple[float, list[tuple[str, str]]]] = {}
_TEMPS_LISTED_MAX = 256


_TEMP_FIXED = 1 + 1 + 10 + 1 + 12 + len(_TEMP_SUFFIX)  # ".", ".", pid (at most 10 digits), ...


def _name_max(directory: str) -> int:
    """The longest file name (in bytes) ``directory`` takes: ``PC_NAME_MAX``, else 255."""
    try:
        n = os.pathconf(directory or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no such directory, Windows, ...
        return 255
    return n if isinstance(n, int) and n > 0 else 255


def _temp_base(directory: str, base: str) -> str:
    """The part of ``base`` a temporary's name holds: ``base`` itself when the whole name
    fits the directory's name limit, else a prefix of it, ``~`` and 16 hex digits of a hash
    of ``base`` (the same for the same ``base``, so `_remove_stale_temps` finds them)."""
    room = _name_max(directory) - _TEMP_FIXED
    encoded = os.fsencode(base)
    if len(encoded) <= room:
        return base
    digest = "~" + hashlib.sha256(encoded).hexdigest()[:16]
    keep = room - len(digest)
    if keep < 1:
        return digest[1:][:max(room, 1)]
    prefix = base[:keep]  # every character takes at least one byte
    while prefix and len(os.fsencode(prefix)) > keep:
        prefix = prefix[:-1]
    return prefix + digest


def named_error(exc: OSError, path: Any, what: str) -> OSError:
    """``exc`` (raised for a temporary of ``path``) again, naming ``path`` instead."""
    return OSError(exc.errno, f"{exc.strerror} ({what})", os.fsdecode(path))


def temp_sibling(path: Any) -> tuple[int, Any]:
    """Create a new empty hidden file next to ``path``; return (fd, temp path).

    Its name is ``.{base}.{pid}.{12 hex digits}.mmarray-tmp``, with ``base`` shortened (a
    prefix and a hash of it, see `_temp_base`) when the whole name would exceed the
    directory's ``PC_NAME_MAX``. Temporaries for the same ``path`` left by processes that
    are gone are removed first (see `_remove_stale_temps`). An error creating it is an
    OSError naming ``path``, not the temporary.
    """
    path = os.fsdecode(path)
    for tmp in _temp_names(path):
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | _O_BINARY, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise named_error(exc, path, "creating a temporary file next to it") from exc
    raise FileExistsError(17, "cannot create a temporary file next to", path)  # pragma: no cover


def temp_sibling_file(path: Any, made: list[str]) -> io.FileIO:
    """As :func:`temp_sibling`, but the new file comes open in a FileIO (read and write),
    which owns its descriptor from the moment it exists, and its name is appended to
    ``made`` just before it is created (taken back if that fails). A caller whose ``try``
    starts before this call can then remove the file whatever bytecode an exception
    (KeyboardInterrupt) lands at: with ``os.open``, one landing between the open and the
    caller's ``try`` left the descriptor open and the file behind."""
    path = os.fsdecode(path)
    for tmp in _temp_names(path):
        made.append(tmp)  # before it exists: removing a name that does not exist is harmless
        try:
            return io.FileIO(tmp, "x+")  # O_CREAT | O_EXCL, mode 0o666 & ~umask, as above
        except FileExistsError:
            made.pop()     # someone else's
            continue
        except OSError as exc:
            made.pop()
            raise named_error(exc, path, "creating a temporary file next to it") from exc
    raise FileExistsError(17, "cannot create a temporary file next to", path)  # pragma: no cover


def _temp_names(path: str) -> Any:
    """Fresh temporary names next to ``path`` (see :func:`temp_sibling`), stale ones swept."""
    directory, base = os.path.split(path)
    base = _temp_base(directory, base)
    _remove_stale_temps(directory, base)
    for _ in range(100):
        yield os.path.join(directory, f".{base}.{os.getpid()}.{os.urandom(6).hex()}"
                                      f"{_TEMP_SUFFIX}")


def _remove_stale_temps(directory, base):
    """Remove the temporaries for ``base`` whose writer (the pid in the name) is gone.

    A writer killed between creating its temporary and renaming it leaves the file behind.
    Only regular files named as `temp_sibling` names them for this very ``base`` are
    considered, and one is removed only when ``os.kill(pid, 0)`` says no such process exists
    on this host; anything else (a live pid, another user's process, an unreadable
    directory) is left alone. POSIX only: on Windows ``os.kill`` would terminate the process.

    The directory is listed at most once every `STALE_SCAN_EVERY` seconds per process (the
    temporaries found are kept for the writes in between): a temporary left after that
    listing is removed by a write after the next one.
    """
    if not POSIX:
        return
    try:  # absolute, but not normalized: "link/.." is the symbolic link's target's parent
        key = directory if os.path.isabs(directory) else \
            os.path.join(os.getcwd(), directory or ".")
    except OSError:  # no working directory (removed): nothing to list; the create says why
        return
    now = time.monotonic()
    listed = _temps_listed.get(key)
    if listed is None or not 0 <= now - listed[0] < STALE_SCAN_EVERY:
        try:
            with os.scandir(key) as entries:
                temps = [(e.name, e.path) for e in entries if e.name.endswith(_TEMP_SUFFIX)
                         and e.is_file(follow_symlinks=False)]
        except OSError:
            return
        if len(_temps_listed) >= _TEMPS_LISTED_MAX:
            _temps_listed.clear()
        listed = _temps_listed[key] = (now, temps)
    prefix = f".{base}."
    stale = [(name, tmp, int(m.group(1))) for name, tmp in listed[1]
             if name.startswith(prefix)
             and (m := _TEMP_TAIL.fullmatch(name, len(prefix))) is not None]
    for name, tmp, pid in stale:
        if pid > _PID_MAX or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists
        except ProcessLookupError:
            try:
                # Listed as a regular file, perhaps a while ago: still one (a symbolic link
                # put at that name since is not a temporary).
                if stat.S_ISREG(os.lstat(tmp).st_mode):
                    os.unlink(tmp)
            except FileNotFoundError:  # removed by another writer meanwhile
                pass
            except OSError:  # not ours to remove
                continue
            try:
                listed[1].remove((name, tmp))
            except ValueError:  # another thread got there first
                pass
        except OSError:  # PermissionError: alive, another user's
            pass


def fsync_directory(path: Any) -> None:
    """fsync the directory holding ``path``, so that a rename into it survives a power loss.

    POSIX only (Windows cannot open a directory for this); skipped where the directory
    cannot be opened for reading or its filesystem does not support fsync on it.
    """
    if not POSIX:
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


def replace_durably(tmp: Any, path: Any) -> None:
    """Rename the (already fsynced) temporary ``tmp`` over ``path`` and fsync the directory.

    With the data synced before and the directory entry after, a crash or power loss leaves
    either the old file or the complete new one at ``path``, never an empty or partial one.
    """
    try:
        os.replace(tmp, path)
    except OSError as exc:
        raise named_error(exc, path, "renaming the complete temporary file over it") from exc
    fsync_directory(path)


def create_mapped(path: Any, perms: int | None, build: Callable[[int], Any],
                  release: Callable[[Any], None]) -> Any:
    """Make a new file at ``path`` whole or not at all, and return what ``build`` mapped of it.

    ``build(fd)`` writes through ``fd``, a descriptor of a temporary sibling of ``path``
    (:func:`temp_sibling`, with mode bits ``perms`` when not None), and maps it; the file is
    then synced (the data written through the mapping is the caller's to flush), closed and
    renamed over ``path`` (:func:`replace_durably`). On any failure, ``release(made)`` undoes
    what ``build`` returned, the temporary goes, and the error propagates: an existing file
    at ``path`` is left as it was, and none is created."""
    fd, tmp = temp_sibling(path)
    made = None
    try:
        if perms is not None:
            os.chmod(tmp, perms)
        made = build(fd)
        os.fsync(fd)  # the header and the file's size (its allocation)
        os.close(fd)
        fd = -1
        replace_durably(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        if made is not None:
            release(made)
        discard(tmp)
        raise
    return made


def discard(tmp: Any) -> None:
    """Remove a temporary file after a failure (quietly: the failure is what is reported)."""
    try:
        os.unlink(tmp)
    except OSError:
        pass


def check_path(path: Any) -> None:
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
