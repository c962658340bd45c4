"""Arrays that cross process boundaries by reference: :func:`ref` and :class:`ArrayRef`.

An array whose data lies in an mmarray mapping -- ``Mapping.array`` or any view of it --
is described by the file it maps, the byte range its elements span, and its dtype, shape
and strides. That description pickles in a few hundred bytes; the receiver maps just that
byte range and builds the same view over it. ``mmarray.memmap`` pickles the same way
(``_compat``), and :func:`mmarray.to_dask` builds dask arrays on it (``_dask``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.lib.stride_tricks import as_strided

from mmarray import _engine, _fileref
from mmarray._api import _short_repr, mapping_of
from mmarray._mapping import (
    Mapping,
    _extent,
    _is_basic_index,
    _mtime,
    array_as,
    map_region,
    view_key,
)

__all__ = ["ArrayRef", "ref"]

_U8 = np.dtype(np.uint8)


class ArrayRef:
    """A small picklable reference to an array whose data lies in a file mapped by mmarray.

    Made by :func:`mmarray.ref`. It holds no data and no mapping until asked: the first
    :attr:`array` (or ``np.asarray(ref)``) maps just the bytes the referenced view spans and
    builds an array equal to it there, writable exactly when the source mapping was
    (modes ``'r+'``/``'w+'``); ``ref[key]`` maps only the bytes that ``key`` selects. The
    file is checked to be the one referenced (as for a pickled :class:`~mmarray.Mapping`).

    An ArrayRef is an array-like (``shape``, ``dtype``, ``ndim``, ``len``, indexing,
    ``__array__``), so ``dask.array.from_array(ref)`` maps each chunk in the task that
    computes it.

    Examples
    --------
    >>> import mmarray, numpy as np, pickle, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "r.i32")
    >>> m = mmarray.open(path, dtype="i4", mode="w+", shape=(100, 100))
    >>> m.array[:] = np.arange(10_000).reshape(100, 100)
    >>> r = mmarray.ref(m.array[10:20, ::-3])
    >>> payload = pickle.dumps(r)
    >>> len(payload) < 1024
    True
    >>> got = np.asarray(pickle.loads(payload))
    >>> bool((got == m.array[10:20, ::-3]).all()), got.flags.writeable
    (True, True)
    >>> m.close()
    """

    __slots__ = ("_filename", "_identity", "_host", "_offset", "_length", "_start", "_dtype",
                 "_shape", "_strides", "_writable", "_layout", "_array")
    _filename: str
    _identity: _fileref.FileIdentity
    _host: str
    _offset: int
    _length: int
    _start: int
    _dtype: np.dtype[Any]
    _shape: tuple[int, ...]
    _strides: tuple[int, ...]
    _writable: bool
    _layout: tuple[tuple[int, bytes], ...] | None
    _array: np.ndarray[Any, Any] | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("ArrayRef objects are made by mmarray.ref(array), not directly")

    @classmethod
    def _new(cls, filename: str, identity: _fileref.FileIdentity, host: str, offset: int,
             length: int, start: int, dtype: np.dtype[Any], shape: tuple[int, ...],
             strides: tuple[int, ...], writable: bool,
             layout: tuple[tuple[int, bytes], ...] | None = None) -> ArrayRef:
        _check_fields(filename, offset, length, start, dtype, shape, strides)
        _fileref.check_identity(identity, host, "an ArrayRef")
        _fileref.check_layout_field(layout, "an ArrayRef")
        if type(writable) is not bool:
            raise TypeError(f"an ArrayRef's writable flag is a bool, got {writable!r:.50}")
        self = object.__new__(cls)
        self._filename = filename
        self._identity = identity
        self._host = host
        self._offset = offset      # file offset of the lowest byte the view reaches
        self._length = length      # bytes from there to one past the highest
        self._start = start        # bytes from the lowest byte to element [0, ..., 0]
        self._dtype = dtype
        self._shape = shape
        self._strides = strides
        self._writable = writable
        self._layout = layout      # the header bytes that said where the data lies, if any
        self._array = None
        return self

    # -- what it refers to --------------------------------------------------------------------

    @property
    def filename(self) -> str:
        """Absolute path of the file."""
        return self._filename

    @property
    def offset(self) -> int:
        """File offset of the lowest byte the array reaches."""
        return self._offset

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def strides(self) -> tuple[int, ...]:
        return self._strides

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return int(np.prod(self._shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self._dtype.itemsize

    @property
    def writable(self) -> bool:
        """True when the source mapping was writable (mode ``'r+'`` or ``'w+'``)."""
        return self._writable

    def __len__(self) -> int:
        if not self._shape:
            raise TypeError("len() of unsized object")
        return self._shape[0]

    def __repr__(self) -> str:
        return (f"<mmarray.ArrayRef {self._filename!r} bytes {self._offset}.."
                f"{self._offset + self._length} dtype={self._dtype} shape={self._shape} "
                f"{'writable' if self._writable else 'read-only'}>")

    # -- the data -----------------------------------------------------------------------------

    @property
    def array(self) -> np.ndarray[Any, Any]:
        """The referenced array, mapped on first use (the same object afterwards)."""
        if self._array is None:
            self._array = self._view(self._start, self._length, 0, self._shape, self._strides)
        return self._array

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray[Any, Any]:
        return array_as(self.array, dtype, copy)

    def __getitem__(self, key: Any) -> Any:
        """``ref[key]``: for basic indexing (ints, slices, ``...``, ``None``, field names),
        maps only the bytes the selection spans; otherwise indexes :attr:`array`."""
        if self._array is not None or not _is_basic_index(key):
            return self.array[key]
        probe, origin = self._probe()
        # Indexed with view_key, the probe gives a view for every basic key, never a scalar:
        # a scalar would be read from the probe's memory, which the layout does not describe.
        sub = probe[view_key(key)]
        if sub.size == 0:
            result = np.empty(sub.shape, sub.dtype)
            result.flags.writeable = self._writable
        else:
            lo, hi = _extent(sub)
            first = self._start + _address(sub) - origin + lo
            result = self._view(-lo, hi - lo, first, sub.shape, sub.strides, sub.dtype)
        if _gives_scalar(key, self._shape, self._dtype):
            return result[()]
        return result

    def __setitem__(self, key: Any, value: Any) -> None:
        """Write ``value`` into the referenced bytes (writable references only), mapping only
        what ``key`` selects, and schedule the write-back (``msync(MS_ASYNC)``)."""
        if not self._writable:
            raise ValueError(f"assignment destination is read-only: the reference to "
                             f"{self._filename!r} was made from a mapping in mode 'r'")
        if self._array is not None or not _is_basic_index(key):
            self.array[key] = value      # fancy indexing writes through numpy's setitem
            _schedule_writeback(self.array)
            return
        target = self[view_key(key)]
        target[...] = value
        _schedule_writeback(target)

    def _probe(self) -> tuple[np.ndarray[Any, Any], int]:
        """(probe, address of its element [0, ..., 0]): an array of this shape, dtype and
        strides over a one-element buffer whose memory is never read. Indexing it gives the
        layout (shape, strides, first element) of a selection by numpy's own rules."""
        base = np.zeros(1, self._dtype)
        return (as_strided(base, self._shape, self._strides, writeable=False),
                _address(base))

    def _view(self, start: int, length: int, first: int, shape: tuple[int, ...],
              strides: tuple[int, ...], dtype: np.dtype[Any] | None = None
              ) -> np.ndarray[Any, Any]:
        """Map ``length`` bytes from file offset ``self._offset + first`` and build the array
        whose element [0, ..., 0] is ``start`` bytes in."""
        dtype = self._dtype if dtype is None else dtype
        if length == 0:
            empty = np.empty(shape, dtype)
            empty.flags.writeable = self._writable
            return empty
        access = _engine.WRITE if self._writable else _engine.READ
        offset = self._offset + first
        try:
            m = map_region(path=self._filename, access=access, offset=offset, length=length,
                           dtype=_U8, shape=(length,), mode="r+" if self._writable else "r",
                           filename=self._filename)
        except (ValueError, OSError) as exc:
            error = _fileref.remap_error(exc, "the referenced bytes", self._filename, offset,
                                         length)
            if error is exc:
                raise
            raise error from exc
        _fileref.verify(m, self._filename, self._identity, self._host)
        _fileref.check_layout(m, self._filename, self._layout)
        if self._layout is not None:  # a ref() of this array sends the header checked
            _fileref.keep_layout(m, self._layout)
        # The Mapping stays open (flush() works on it) and is unmapped once the array and
        # its views are gone. [start + lowest, start + highest] is [0, length): in bounds.
        return np.ndarray(shape, dtype, buffer=m.array, offset=start, strides=strides)

    # -- crossing processes -------------------------------------------------------------------

    def __reduce__(self) -> tuple[Any, ...]:
        fields: tuple[Any, ...] = (
            self._filename, self._identity, self._host, self._offset, self._length,
            self._start, self._dtype, self._shape, self._strides, self._writable)
        if self._layout is not None:  # (without: readable by versions that have none)
            fields += (self._layout,)
        return (_rebuild, fields)

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("mmarray.ArrayRef", self._filename, self._identity, _mtime(self._filename),
                self._offset, self._length, self._start, self._dtype.str, self._dtype.descr,
                self._shape, self._strides, self._writable)


ArrayRef.__module__ = "mmarray"


def _check_fields(filename: Any, offset: Any, length: Any, start: Any, dtype: Any,
                  shape: Any, strides: Any) -> None:
    """Refuse what no ref() makes: the fields arrive from a pickle, which anyone can write."""
    ints = (offset, length, start)
    if not (isinstance(filename, str) and all(type(v) is int and v >= 0 for v in ints)
            and isinstance(dtype, np.dtype) and type(shape) is tuple
            and type(strides) is tuple and len(shape) == len(strides)
            and all(type(v) is int for v in (*shape, *strides))):
        raise TypeError("an ArrayRef holds a str file name, offsets and lengths >= 0, a "
                        "numpy.dtype, and shape and strides as tuples of ints of one length")
    if dtype.hasobject:
        raise TypeError(f"dtype {dtype} cannot be mapped: it holds Python objects")
    limit = _fileref.LIMIT
    if any(v >= limit for v in ints) or offset + length >= limit:
        raise ValueError(f"an ArrayRef's offset {offset}, length {length} and start {start} "
                         f"must be below 2**63, and so must offset + length")
    if any(n < 0 for n in shape):
        raise ValueError(f"an ArrayRef's shape {shape} has a negative size; expected sizes "
                         f">= 0")
    if any(abs(s) >= limit for s in strides):
        raise ValueError(f"an ArrayRef's strides {strides} must be below 2**63 in size")
    size = 1
    for n in shape:
        size *= n
    if size * dtype.itemsize >= limit:
        raise ValueError(f"an ArrayRef of shape {shape} and dtype {dtype} is 2**63 bytes or "
                         f"more")
    if size and dtype.itemsize:  # the bytes the view touches, relative to the lowest mapped one
        low = start + sum((n - 1) * s for n, s in zip(shape, strides) if s < 0)
        high = start + sum((n - 1) * s for n, s in zip(shape, strides) if s > 0) \
            + dtype.itemsize
        if low < 0 or high > length:
            raise ValueError(f"an ArrayRef of shape {shape}, strides {strides} and dtype "
                             f"{dtype} from byte {start} reaches bytes {low} to {high}, "
                             f"outside the {length} bytes it maps")


def _rebuild(*fields: Any) -> ArrayRef:
    return ArrayRef._new(*fields)


def _gives_scalar(key: Any, shape: tuple[int, ...], dtype: np.dtype[Any]) -> bool:
    """Whether numpy answers ``array[key]`` with a scalar, for an array of this shape and
    dtype: asked of a read-only broadcast of one element, whose every index is valid memory."""
    return not isinstance(np.broadcast_to(np.zeros((), dtype), shape)[key], np.ndarray)


def _address(array: np.ndarray[Any, Any]) -> int:
    return int(array.__array_interface__["data"][0])


def _schedule_writeback(array: np.ndarray[Any, Any]) -> None:
    mapping = mapping_of(array)
    if isinstance(mapping, Mapping) and not mapping.closed and array.size:
        lo, hi = _extent(array)
        # array is a view of mapping's region, so [first, first + hi - lo) lies inside it.
        first = _address(array) + lo - mapping._data_address()
        mapping._flush_bytes(first, hi - lo, False)


def ref(array: np.ndarray[Any, Any]) -> ArrayRef:
    """A picklable reference to ``array``, whose data lies in an mmarray mapping.

    ``array`` is a :attr:`Mapping.array <mmarray.Mapping.array>` or any view of one (slices
    with steps, transposes, reshapes, field selections). The reference pickles in a few
    hundred bytes; in another process ``np.asarray(ref)`` or ``ref.array`` maps just the
    bytes the view spans and returns an array equal to it, writable exactly when the source
    mapping was.

    Raises
    ------
    TypeError
        ``array`` is not an ndarray backed by an mmarray mapping, its mapping is
        copy-on-write (mode ``'c'``: its changes are not in the file), or it maps a file
        object that has no name.
    ValueError
        ``array`` reaches bytes outside its mapping (an ``as_strided`` view).

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "ref.f8")
    >>> with mmarray.open(path, dtype="f8", mode="w+", shape=(4, 6)) as m:
    ...     m.array[:] = np.arange(24).reshape(4, 6)
    ...     r = mmarray.ref(m.array.T[::2])
    >>> r.shape, np.asarray(r)[1].tolist()
    ((3, 4), [2.0, 8.0, 14.0, 20.0])
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy.ndarray whose data lies in an mmarray mapping, got "
                        f"{type(array).__name__}")
    mapping = mapping_of(array)
    if not isinstance(mapping, Mapping):
        raise TypeError(f"expected an array whose data lies in an mmarray mapping, got an "
                        f"ndarray of shape {_short_repr(array.shape)} that is not backed by one "
                        f"(its data is in memory; map it with mmarray.open or mmarray.load)")
    filename, identity = mapping._shared_file()
    dtype = array.dtype
    writable = mapping.mode in ("r+", "w+")
    if array.nbytes == 0:  # no bytes to refer to (size 0, or an itemsize of 0)
        return ArrayRef._new(filename, identity, _fileref.host_id(), mapping.offset, 0, 0,
                             dtype, array.shape, array.strides, writable)
    layout = mapping._layout(filename, identity)
    base = mapping._data_address()
    lo, hi = _extent(array)
    first = _address(array) + lo - base
    if base == 0 or first < 0 or first + hi - lo > mapping._mapped_length():
        raise ValueError(f"the array of shape {_short_repr(array.shape)} and strides "
                         f"{_short_repr(array.strides)} reaches bytes outside its mapping of "
                         f"{filename!r}; expected a view that numpy indexing made of the "
                         f"mapping as it is now (an array made before a resize() keeps the "
                         f"old region, which a reference cannot name: take it again from "
                         f"the mapping)")
    return ArrayRef._new(filename, identity, _fileref.host_id(), mapping.offset + first,
                         hi - lo, -lo, dtype, array.shape, array.strides, writable, layout)
