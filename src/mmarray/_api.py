"""The public entry points of the core engine: `open` and `close`.

Policy lives here: argument checking with messages, numpy.memmap's semantics for each
argument, and the choice of C flags. The engine (``_engine``) only maps, counts and unmaps.
"""
from __future__ import annotations

import codecs
import functools
import io
import operator
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex, Union

import numpy as np

from mmarray import _engine
from mmarray._engine import Region, _ArrayExport
from mmarray._mapping import Mapping, map_region
from mmarray._ranges import advice_code
from mmarray._textsig import doc_with_text_signature

if TYPE_CHECKING:
    from _typeshed import HasFileno, StrOrBytesPath
    from numpy.typing import DTypeLike

    from mmarray._ranges import Advice, Order

__all__ = ["open", "close", "Mapping", "MODES"]

#: A mode in its short form, as numpy.memmap spells it and :attr:`Mapping.mode` gives it.
ShortMode = Literal["r", "r+", "w+", "c"]
#: The modes open() and memmap() take: the short forms and numpy's long names.
Mode = Literal["r", "r+", "w+", "c", "readonly", "readwrite", "write", "copyonwrite"]
#: A shape: one integer (a 1-D length) or a sequence of them.
ShapeLike = Union[SupportsIndex, Sequence[SupportsIndex]]

#: The modes, as numpy.memmap spells them, and their long names (numpy's mode_equivalents).
MODES: tuple[ShortMode, ...] = ("r", "r+", "w+", "c")
_MODE_ALIASES: dict[str, ShortMode] = {
    "readonly": "r", "copyonwrite": "c", "readwrite": "r+", "write": "w+"}
# mode -> (access, flags) for the C layer.
_MODE_ACCESS: dict[ShortMode, tuple[int, int]] = {
    "r": (_engine.READ, 0),
    "c": (_engine.COPY, 0),
    "r+": (_engine.WRITE, _engine.GROW),
    "w+": (_engine.WRITE, _engine.GROW | _engine.CREATE),
}
# mode (numpy's short and long names) -> (short mode, access, flags)
_MODE_SPEC: dict[str, tuple[ShortMode, int, int]] = {
    name: (short, *_MODE_ACCESS[short])
    for name, short in [*((m, m) for m in _MODE_ACCESS), *_MODE_ALIASES.items()]}
_INT64_MAX = 2**63 - 1
_INTP_MAX = int(np.iinfo(np.intp).max)
_POSIX = os.name != "nt"
_TO_END = _engine.TO_END
_CREATE = _engine.CREATE
_POPULATE = _engine.POPULATE
_dtype_cache: dict[Any, np.dtype[Any]] = {}

_FD_MAX = 2**31 - 1  # descriptors are C ints (open(2)); Windows CRT descriptors too


def fileno_of(file: Any) -> int:
    """The OS file descriptor behind a file object, checked.

    Returns a non-negative int naming an open file. Raises TypeError when ``file.fileno()``
    cannot give a descriptor (BytesIO and friends) or gives anything but an int, ValueError
    for an int that cannot be a descriptor, and OSError (EBADF) for a closed or invalid one.
    """
    try:
        fd = file.fileno()
    except io.UnsupportedOperation as exc:  # BytesIO, StringIO: no OS file behind them
        raise TypeError(f"file must be a path or a file object with a working fileno() (an "
                        f"OS file to map), got {type(file).__name__}: {exc}") from None
    if isinstance(fd, bool) or not isinstance(fd, (int, np.integer)):
        raise TypeError(f"{type(file).__name__}.fileno() returned {_short_repr(fd)}; expected "
                        f"a non-negative int (an OS file descriptor)")
    fd = int(fd)
    if fd < 0 or fd > _FD_MAX:
        raise ValueError(f"{type(file).__name__}.fileno() returned {_short_repr(fd)}; expected "
                         f"a file descriptor from 0 to {_FD_MAX}")
    try:
        os.fstat(fd)  # EBADF for a closed or invalid descriptor, before any other use
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: {type(file).__name__}.fileno() returned "
                                 f"{fd}") from None
    return fd


def _short_repr(value: Any, limit: int = 80) -> str:
    """repr() for messages: bounded in length, and safe for ints past str()'s digit limit."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"<int of {value.bit_length()} bits>"
    if type(value) in (tuple, list) and len(value) <= 64:
        inner = ", ".join(_short_repr(v, limit) for v in value)
        text = f"({inner}{',' if len(value) == 1 else ''})" if type(value) is tuple \
            else f"[{inner}]"
        return text if len(text) <= limit else text[:limit - 3] + "..."
    try:
        text = repr(value)
    except Exception:  # a repr that raises must not hide the real error
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_mode(mode: object) -> str:
    m = _MODE_ALIASES.get(mode, mode) if isinstance(mode, str) else None
    if m not in _MODE_ACCESS:
        raise ValueError(f"mode must be one of {sorted(list(MODES) + list(_MODE_ALIASES))!r}, "
                         f"got {mode!r}")
    return m


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    try:
        return _dtype_cache[dtype]
    except (KeyError, TypeError):
        pass
    dt = np.dtype(dtype)
    if dt.hasobject:
        raise TypeError(f"dtype {dt!r} contains Python objects, which cannot be memory-mapped; "
                        f"expected a dtype of plain data (numbers, bytes, structs of them)")
    if dt.itemsize == 0:
        # As numpy.memmap takes it ('S', 'V0', '(0,)i4', np.dtype([])): an array of no bytes,
        # given a shape (see _check_no_bytes). Not cached: the engine's fast paths, which
        # look dtypes up in this cache, size a whole file by the itemsize.
        return dt
    try:
        if len(_dtype_cache) < 256:
            _dtype_cache[dtype] = dt
    except TypeError:  # unhashable spec, e.g. a list of fields
        pass
    return dt


def _check_sized(dt: np.dtype[Any]) -> None:
    """ValueError for a dtype of itemsize 0 with no shape: no file size tells a length."""
    if dt.itemsize == 0:
        raise ValueError(f"dtype {dt!r} has itemsize 0, so the length cannot be inferred "
                         f"from the file size; give a shape (the array then holds no bytes)")


def _check_shape(shape: Any, itemsize: int) -> tuple[tuple[int, ...], int]:
    """Return (shape tuple, nbytes) or raise."""
    try:  # any integer, np.int64 included, is a 1-D length (as numpy.memmap takes it)
        shape = (operator.index(shape),)
    except TypeError:
        try:
            shape = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise TypeError(f"shape must be an int or a sequence of ints, got "
                            f"{_short_repr(shape)}") from None
    n = itemsize
    span = itemsize  # numpy's bound: the itemsize times the nonzero dimensions
    for d in shape:
        if d < 0:
            raise ValueError(f"shape {_short_repr(shape)} has a negative dimension; expected "
                             f"sizes >= 0")
        if d > _INTP_MAX:
            raise ValueError(f"shape {_short_repr(shape)} has a dimension above {_INTP_MAX}, "
                             f"the largest numpy allows")
        n *= d
        span *= d or 1
    if n > _INT64_MAX:
        raise ValueError(f"shape {_short_repr(shape)} of itemsize {itemsize} is "
                         f"{_short_repr(n)} bytes, which overflows 64 bits; expected at most "
                         f"{_INT64_MAX} bytes")
    if span > _INTP_MAX:  # numpy refuses such an array ("array is too big") even of no bytes
        raise ValueError(f"shape {_short_repr(shape)} of itemsize {itemsize} is too big for "
                         f"numpy: its nonzero dimensions times the itemsize come to "
                         f"{_short_repr(span)}, more than {_INTP_MAX}")
    return shape, n


def _check_offset(offset: int) -> None:
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {_short_repr(offset)}")
    if offset > _INT64_MAX:
        raise ValueError(f"offset {_short_repr(offset)} overflows 64 bits; expected at most "
                         f"{_INT64_MAX}")


def _check_end(offset: int, length: int) -> None:
    if offset + length > _INT64_MAX:
        raise ValueError(f"offset {offset} + {length} bytes overflows 64 bits; expected an end "
                         f"of at most {_INT64_MAX}")


def _check_order(order: str | None) -> Order:
    if order in ("C", "F"):
        return order  # type: ignore[return-value]  # 'C' or 'F'
    if order in ("c", "f"):
        return order.upper()  # type: ignore[return-value]  # 'C' or 'F'
    if order is None or order in ("A", "K", "a", "k"):
        # numpy.memmap passes order to ndarray.__new__, where these mean 'C'
        return "C"
    raise ValueError(f"order must be 'C' or 'F' (or None, 'A', 'K', meaning 'C' as in "
                     f"numpy.memmap), got {order!r}")


def open(file: StrOrBytesPath | HasFileno, dtype: DTypeLike = "uint8", mode: Mode = "r+",
         offset: SupportsIndex = 0, shape: ShapeLike | None = None,
         order: Order | Literal["A", "K"] | None = "C", *,
         populate: bool = False, advise: Advice | None = None) -> Mapping:
    """Map a file, or part of it, as an array.

    The arguments mean what they mean for :class:`numpy.memmap`; the result is a
    :class:`Mapping`, whose :attr:`~Mapping.array` is a plain :class:`numpy.ndarray`.

    Parameters
    ----------
    file : str, bytes, os.PathLike or file object
        The file to map. A file object must have ``fileno()``; it is not closed, and the
        mapping does not keep it (or any descriptor) open.
    dtype : data-type, optional
        Element type (default ``uint8``). Structured dtypes work; dtypes holding Python
        objects do not.
    mode : {'r+', 'r', 'w+', 'c'}, optional
        ``'r'`` read-only; ``'r+'`` read-write (a short file is grown); ``'w+'`` create or
        overwrite; ``'c'`` copy-on-write (writes stay in memory, never reach the file).
        numpy's long names (``'readonly'``, ...) are accepted.
    offset : int, optional
        Byte offset of the first element in the file. Any value works: alignment to pages is
        handled inside.
    shape : int or tuple of int, optional
        Array shape. ``None`` infers a 1-D length from the file size after ``offset`` (which
        must then be a multiple of the itemsize). A zero-size shape gives an empty array
        without mapping anything.
    order : {'C', 'F'}, optional
        Memory layout of a multi-dimensional array. None, ``'A'`` and ``'K'`` mean ``'C'``,
        as for :class:`numpy.memmap`.
    populate : bool, optional
        Fault the whole range in at open (``MAP_POPULATE``).
    advise : str, optional
        Advice applied to the whole range at open, as for :meth:`Mapping.advise`, e.g.
        ``"random"`` for scattered reads (turns readahead off) or ``"sequential"``.

    Returns
    -------
    Mapping

    Raises
    ------
    FileNotFoundError, IsADirectoryError, PermissionError, OSError
        From the operating system.
    ValueError
        A bad mode, order, offset or shape, a shape that does not fit the file in mode
        ``'r'``/``'c'``, a file size that is not a multiple of the itemsize, or a dtype of
        itemsize 0 (``'S'``, ``'V0'``) without a shape (with one, the array holds no bytes).
    TypeError
        A dtype holding objects, or a shape that is not made of integers.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.f64")
    >>> m = mmarray.open(path, dtype=np.float64, mode="w+", shape=(3, 4))
    >>> a = m.array
    >>> type(a) is np.ndarray
    True
    >>> a[:] = np.arange(12).reshape(3, 4)
    >>> m.flush(); m.close()
    >>> with mmarray.open(path, dtype=np.float64, mode="r", offset=8 * 4, shape=4) as m:
    ...     m.array.tolist()
    [4.0, 5.0, 6.0, 7.0]
    """
    # The general path. What runs as mmarray.open is the engine's open (installed
    # below), which makes the common case (a str path mapped whole, a mode and a dtype seen
    # before) in one call and calls this for anything else, and for any failure.
    spec = _MODE_SPEC.get(mode) if type(mode) is str else None
    if spec is None:
        spec = _MODE_SPEC[_check_mode(mode)]  # raises for a bad mode
    mode, access, flags = spec
    dt = _check_dtype(dtype)
    if type(offset) is not int:
        offset = operator.index(offset)
    _check_offset(offset)
    if order != "C":
        order = _check_order(order)
    if advise is not None:
        advice_code(advise)  # reject a bad name before mapping anything
    if populate:
        flags |= _POPULATE

    if shape is None:
        if mode == "w+":
            raise ValueError("shape must be given if mode == 'w+' (there is no data to infer it "
                             "from)")
        _check_sized(dt)
        length = _TO_END
    else:
        shape, length = _check_shape(shape, dt.itemsize)
        _check_end(offset, length)

    fd = None
    if type(file) is str:  # the common case, without the generic calls
        filename = _abspath(file)
        if not file:
            raise FileNotFoundError(2, "No such file or directory", file)
    elif isinstance(file, (str, bytes, os.PathLike)):
        file = os.fspath(file)
        filename = _abspath(os.fsdecode(file))
        if not file:
            raise FileNotFoundError(2, "No such file or directory", file)
    elif hasattr(file, "fileno"):
        _check_writable_file(file, mode)
        if hasattr(file, "flush"):
            file.flush()  # numpy.memmap's seek() does the same: buffered writes reach the file
        fd, file = fileno_of(file), None  # type: ignore[assignment]  # mapped by descriptor
        filename = None
        flags &= ~_CREATE
    else:
        raise TypeError(f"file must be a path (str, bytes, os.PathLike) or an object with "
                        f"fileno(), got {type(file).__name__}")

    # length 0 maps nothing; the engine still checks, creates or grows the file as for data
    # file is a path (str or bytes) or None here: a file object was replaced by its descriptor
    try:
        m = map_region(path=file, fd=fd, access=access,  # type: ignore[arg-type]
                       offset=offset, length=length, flags=flags, dtype=dt, shape=shape,
                       order=order, mode=mode, filename=filename)
    except ValueError:
        # Nothing after an offset at the very end of a non-empty file (the engine's E_EMPTY):
        # an empty array, as numpy.memmap infers one. An empty file stays an error, as there.
        if shape is not None or offset == 0 or _file_size(file, fd) != offset:  # type: ignore[arg-type]
            raise
        m = map_region(path=file, fd=fd, access=access,  # type: ignore[arg-type]
                       offset=offset, length=0, flags=flags, dtype=dt, shape=(0,),
                       order=order, mode=mode, filename=filename)
    if advise is not None:
        try:
            m.advise(advise)
        except BaseException:
            m.close()
            raise
    return m


def _file_size(path: StrOrBytesPath | None, fd: int | None) -> int:
    """Size of the file at ``path`` or behind descriptor ``fd`` (-1 if it cannot be known)."""
    try:
        return (os.stat(path).st_size if path is not None
                else os.fstat(fd).st_size)  # type: ignore[arg-type]  # fd: not None then
    except (OSError, ValueError):  # ValueError: a NUL byte, which the engine reports
        return -1


def _check_writable_file(file: object, mode: str) -> None:
    """Modes that write ('r+', 'w+') need a file object open for writing: say so up front
    (PermissionError, as the OS would) rather than fail later with its EBADF or EACCES."""
    if mode in ("r+", "w+"):
        writable = getattr(file, "writable", None)
        if writable is not None and not writable():
            raise PermissionError(f"mode {mode!r} needs a file object open for writing, got "
                             f"{_short_repr(file)} (open it with 'r+b' or 'w+b', or map it "
                             f"with mode 'r' or 'c')")


def _abspath(path: str) -> str:
    """os.path.abspath, without its work for an absolute POSIX path that is already normal."""
    if (_POSIX and path[:1] == "/" and "//" not in path and "/." not in path
            and path[-1:] != "/"):
        return path  # nothing for normpath to change: no '//', '.', '..' or trailing '/'
    return os.path.abspath(path)


# The engine's fast path for open() and memmap(): the modes it takes (not 'w+', which needs a
# shape), the dtypes _check_dtype has accepted (this very dict, filled as they are), and the
# path encoding it may use: UTF-8 is what _mapping._encode_path gives on Windows, and on POSIX
# when the file system encoding is UTF-8 (a path it cannot encode strictly, with lone
# surrogates, takes the general path).
_FAST_MODES: dict[str, tuple[ShortMode, int, int]] = {
    name: spec for name, spec in _MODE_SPEC.items() if spec[0] != "w+"}
_general_open = open


def install_fast_open() -> None:
    """Hand the engine the tables of its fast path and the general `open` (see above)."""
    _engine.set_fast_open(
        _FAST_MODES, _dtype_cache, Mapping, _abspath,
        not _POSIX or codecs.lookup(sys.getfilesystemencoding()).name == "utf-8", _POSIX,
        _general_open)


install_fast_open()
_check_dtype("uint8")  # open()'s default dtype, in the table from the start
if not TYPE_CHECKING:
    # mmarray.open is the engine's front: the common case in one call of the engine, not two
    # (callgrind: 4.3% of the instructions of an open + array + close of a 4 KiB file), the
    # rest by the general open above, whose docstring and signature (without annotations) it
    # shows. A built-in function, which the interpreter calls from the call site (A/B: ~0.02x
    # of the C floor less per open + array + close of a 4 KiB file).
    open = _engine.open_builtin(doc_with_text_signature(_general_open), "mmarray._api")
    if open is _engine.open:
        open = functools.update_wrapper(_engine.open, _general_open)


def close(array: object, strict: bool = False) -> None:
    """Close the :class:`Mapping` behind an array that mmarray handed out.

    Walks ``array.base`` to the mapping (so views and reshapes work too) and calls its
    :meth:`Mapping.close`.

    Parameters
    ----------
    array : numpy.ndarray
        An array from :attr:`Mapping.array`, or a view of one.
    strict : bool, optional
        Passed to :meth:`Mapping.close`.

    Raises
    ------
    TypeError
        ``array`` is not backed by an mmarray mapping.

    Examples
    --------
    >>> import mmarray, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.bin")
    >>> a = mmarray.open(path, mode="w+", shape=8).array
    >>> mmarray.close(a[2:4])
    >>> a[0] = 1                   # still valid: unmapped only when `a` goes away
    """
    mapping = mapping_of(array)
    if mapping is None:
        raise TypeError(f"expected an array handed out by mmarray, got {type(array).__name__} "
                        f"not backed by an mmarray mapping")
    mapping.close(strict=strict)


def mapping_of(array: object) -> Mapping | None:
    """Return the :class:`Mapping` behind ``array`` (walking ``.base``), or None.

    Follows ``memoryview.obj`` too, so arrays made from a Mapping's buffer
    (``np.frombuffer(m)``) lead back to it.
    """
    obj = array
    while obj is not None:
        # Every region the package maps is a Mapping (map_region's cls).
        if isinstance(obj, _ArrayExport):
            return obj.mapping  # type: ignore[return-value]
        if isinstance(obj, Region):
            return obj  # type: ignore[return-value]
        if isinstance(obj, memoryview):
            obj = obj.obj
            continue
        obj = getattr(obj, "base", None)
    return None
