"""Drop-in replacements for :class:`numpy.memmap` and :func:`numpy.lib.format.open_memmap`.

``mmarray.memmap`` is a subclass of :class:`numpy.memmap` built on mmarray's engine instead of
the :mod:`mmap` module: same constructor, attributes and array behaviour, no file descriptor
held, any offset, zero-size arrays, plus :meth:`memmap.close` and use as a context manager.
numpy's own test suites for both are run against these in ``tests/test_numpy_suites.py``.
"""
from __future__ import annotations

import operator
import os
import pickle
import sys
from typing import TYPE_CHECKING, Any, Literal, SupportsIndex, TypeVar

import numpy as np

from mmarray import _engine
from mmarray._api import (
    _MODE_SPEC,
    _abspath,
    _check_dtype,
    _check_end,
    _check_mode,
    _check_offset,
    _check_order,
    _check_shape,
    _check_sized,
    _check_writable_file,
    _file_size,
    fileno_of,
)
from mmarray._api import mapping_of as _mapping_of
from mmarray._errors import SizeNotMultipleError
from mmarray._mapping import Mapping, map_region
from mmarray._share import ArrayRef, ref

if TYPE_CHECKING:
    from typing import Protocol

    from _typeshed import StrOrBytesPath, StrPath
    from numpy.typing import DTypeLike
    from typing_extensions import Self

    from mmarray._api import Mode, ShapeLike, ShortMode
    from mmarray._engine import _ArrayExport

    class _FileObject(Protocol):
        """What memmap maps of a file object: one with ``read`` and a descriptor."""

        def read(self, size: int = ..., /) -> object: ...

        def fileno(self) -> int: ...

# numpy's public .npy API; what it lacks (version 3.0, picking the version) is _npyformat's.
from numpy.lib import format as _npy_format

from mmarray import _npyformat

_VERSIONS = (None, (1, 0), (2, 0), (3, 0))

__all__ = ["memmap", "open_memmap"]

_ndarray = np.ndarray
_ndarray_getitem = np.ndarray.__getitem__
_ndarray_array_wrap = np.ndarray.__array_wrap__
_may_share_memory = np.may_share_memory
_TO_END = _engine.TO_END
_array_to_end = _engine.array_to_end
# numpy.memmap's attributes, as _array_to_end sets them: the Mapping, 0, its mode, its name.
_ATTRIBUTES = ("_mmap", "offset", "mode", "filename")
_fspath = os.fspath
# mode (numpy's short and long names) -> (short mode, engine access, engine flags)
_MODES = _MODE_SPEC  # mode (numpy's short and long names) -> (short mode, access, flags)
_MISSING = object()
# numpy.memmap's message when mode 'r'/'c' meets an empty file (numpy's tests match on it).
_EMPTY_FILE = "cannot mmap an empty file"


_new_export = Mapping._export
_M = TypeVar("_M", bound="memmap")


class memmap(np.memmap):
    """Create a memory-map to an array stored in a *binary* file on disk.

    A drop-in for :class:`numpy.memmap` (and a subclass of it): the same constructor,
    the attributes ``filename``, ``offset`` and ``mode``, :meth:`flush`, and views, ufunc
    results and reductions that behave exactly as numpy's do. It is mapped by mmarray's engine
    rather than the :mod:`mmap` module, so

    * no file descriptor is held while the array lives,
    * any ``offset`` works (alignment is handled inside),
    * zero-size arrays map nothing, and
    * :meth:`close` (and ``with``) release the mapping under the engine's safe-close rules:
      the region is unmapped only once no array can reach it, so nothing ever dangles.

    Parameters
    ----------
    filename : str, bytes, os.PathLike or file object
        The file to map. A file object (anything with ``read``) is flushed, used through its
        descriptor and left open; the mapping does not keep the descriptor.
    dtype : data-type, optional
        The data type of the elements (default ``uint8``).
    mode : {'r+', 'r', 'w+', 'c'}, optional
        ``'r'`` read-only, ``'r+'`` read-write (the default), ``'w+'`` create or overwrite
        (needs `shape`), ``'c'`` copy-on-write (assignments never reach the file). numpy's
        long names (``'readonly'``, ``'readwrite'``, ``'write'``, ``'copyonwrite'``) work too.
    offset : int, optional
        Byte offset of the array data in the file. In modes ``'r+'`` and ``'w+'`` a file too
        short for ``offset`` plus the data is extended.
    shape : int or sequence of ints, optional
        The array shape. By default a 1-D array of all the data after `offset`, whose size
        must then be a multiple of the itemsize.
    order : {'C', 'F'}, optional
        Memory layout of a multi-dimensional array. None, ``'A'`` and ``'K'`` mean ``'C'``,
        as for :class:`numpy.memmap`.

    Attributes
    ----------
    filename : str, pathlib.Path or None
        Absolute path of the mapped file (a resolved :class:`pathlib.Path` if a path object was
        given; None for a ``bytes`` path or a file object without a ``str`` name), as numpy.
    offset : int
        The `offset` argument.
    mode : str
        The mode, in its short form.
    closed : bool
        True once :meth:`close` was called.

    Raises
    ------
    ValueError
        A bad mode, offset or shape, ``mode='w+'`` without a shape, a shape that does not fit
        the file in mode ``'r'``/``'c'``, an empty file in mode ``'r'``/``'c'``, or data whose
        size is not a multiple of the itemsize when `shape` is None (a dtype of itemsize 0
        then, where numpy raises ZeroDivisionError).
    TypeError
        A dtype holding Python objects, or a shape that is not made of integers.
    OSError
        From the operating system (:class:`FileNotFoundError`, :class:`PermissionError`, ...).

    See Also
    --------
    mmarray.open : the same mapping as a plain :class:`numpy.ndarray`, without the subclass.
    mmarray.open_memmap : a ``.npy`` file as a ``memmap``.

    Notes
    -----
    Differences from :class:`numpy.memmap`, all of them additions or things numpy cannot do:
    :meth:`close`, :attr:`closed` and the context manager; ``base`` of a freshly opened memmap
    is an mmarray export object, not an :class:`mmap.mmap`; a zero-size memmap in mode
    ``'r+'``/``'w+'`` does not write a byte into an empty file; flushing a closed memmap raises
    :class:`ValueError`; pickling in modes ``'r'``, ``'r+'`` and ``'w+'`` stores a reference
    to the file, never the data (see :meth:`__reduce__`), where numpy's pickle is a copy that
    maps nothing (mode ``'c'`` pickles a copy, as numpy does). As with numpy, results of ufuncs
    and reductions are plain ndarrays or scalars, and slices are memmaps.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "newfile.dat")
    >>> fp = mmarray.memmap(path, dtype="float32", mode="w+", shape=(3, 4))
    >>> fp[:] = np.arange(12, dtype="float32").reshape(3, 4)
    >>> fp.flush()
    >>> isinstance(fp, np.memmap), fp.filename == os.path.abspath(path)
    (True, True)
    >>> type(fp + 1) is np.ndarray, type(fp[1:]) is mmarray.memmap
    (True, True)
    >>> with mmarray.memmap(path, dtype="float32", mode="r", offset=16) as r:
    ...     r.tolist()
    [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]
    >>> r.closed
    True
    >>> fp.close()
    """

    # Defaults for arrays that map nothing (copies, unpickled objects): numpy sets these to
    # None in __array_finalize__; class attributes give the same values without the cost.
    # As numpy's stub types them: None only for an array that maps nothing.
    _mmap: Mapping | None = None
    filename: str | None = None
    offset: int = None  # type: ignore[assignment]
    mode: str = None  # type: ignore[assignment]
    # A view's own export of the Mapping: it makes live views visible to close(strict=True).
    _view_export: _ArrayExport | None = None

    def __new__(subtype, filename: StrOrBytesPath | _FileObject, dtype: DTypeLike = np.uint8,
                mode: Mode = "r+", offset: SupportsIndex = 0, shape: ShapeLike | None = None,
                order: Literal["C", "F", "A", "K"] | None = "C") -> Self:
        # The common case (a str path mapped whole, as mmarray.open's fast path takes it):
        # the same Mapping the general path below makes, and the array with numpy's
        # attributes for it, in one engine call (callgrind: ~650 instructions, 8%, fewer
        # than opening, then calling _array_of, then four setattrs).
        self = _array_to_end(subtype, _ATTRIBUTES, filename, dtype, mode, offset, shape,
                             order)
        if self is not None:
            return self
        return _new_memmap(subtype, filename, dtype, mode, offset, shape, order)

    def __array_finalize__(self, obj: Any) -> None:
        # numpy.memmap's rule: a new array sharing memory with a memmap inherits its file
        # attributes; anything else keeps the class defaults (None).
        if obj is None:
            return
        mapping: Any = getattr(obj, "_mmap", _MISSING)
        if mapping is _MISSING or not _may_share_memory(self, obj):
            return
        self._mmap = mapping
        self.filename = obj.filename
        self.offset = obj.offset
        self.mode = obj.mode
        if isinstance(mapping, Mapping) and not mapping.closed:
            try:
                self._view_export = _new_export(mapping)
            except ValueError:  # closed by another thread meanwhile: nothing left to count
                pass

    def __array_wrap__(self, arr: np.ndarray[Any, Any],
                       context: tuple[np.ufunc, tuple[Any, ...], int] | None = None,
                       return_scalar: bool = False) -> Any:
        # numpy.memmap's, with this class in place of numpy.memmap: ufunc results and
        # reductions of an mmarray.memmap are ndarrays or scalars; subclasses keep their type.
        arr = _ndarray_array_wrap(self, arr, context)
        if self is arr or type(self) is not memmap:
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(_ndarray)

    def __getitem__(self, index: Any) -> Any:
        res = _ndarray_getitem(self, index)
        if type(res) is memmap and res._mmap is None:
            return res.view(type=_ndarray)  # a copy (fancy indexing): not memory-mapped
        return res

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle by reference in modes ``'r'``, ``'r+'`` and ``'w+'``: the file, the bytes
        this array (or view) spans, its dtype, shape and strides; never the data. Unpickling
        maps just those bytes (``'w+'`` becomes ``'r+'``: nothing is truncated or grown) and
        checks the file is the one pickled, as :func:`mmarray.ref` does. Mode ``'c'``, and
        arrays that map nothing, pickle a copy of the data, as numpy does."""
        _register_with_distributed()
        mapping = self._mmap
        if isinstance(mapping, Mapping) and self.mode in ("r", "r+", "w+"):
            try:
                reference = ref(self.view(_ndarray))
            except TypeError:  # a file object without a name: nothing to refer to
                pass
            else:
                mode = "r+" if self.mode == "w+" else self.mode
                fields: tuple[Any, ...] = (reference, self.filename, self.offset, mode)
                # The class only for a subclass: a plain memmap's pickle stays readable
                # by versions whose _memmap_from_ref takes four arguments.
                if type(self) is not memmap:
                    fields += (type(self),)
                return (_memmap_from_ref, fields)
        by_value: tuple[Any, ...] = super().__reduce__()  # type: ignore[assignment]
        return by_value

    def flush(self) -> None:
        """Write any changes in the array to the file on disk.

        Durable on return (``msync(MS_SYNC)``; Windows ``FlushViewOfFile`` and
        ``FlushFileBuffers``). A no-op for modes ``'r'`` and ``'c'`` and for arrays that map
        nothing (copies, unpickled memmaps).

        Raises
        ------
        ValueError
            The memmap was closed.
        OSError
            The write-back failed.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "f.bin")
        >>> fp = mmarray.memmap(path, mode="w+", shape=3)
        >>> fp[:] = 7
        >>> fp.flush()
        >>> with open(path, "rb") as f:
        ...     f.read()
        b'\\x07\\x07\\x07'
        """
        mapping = self._mmap
        if mapping is not None:
            mapping.flush()

    def close(self, strict: bool = False) -> None:
        """Close the mapping behind this memmap (and behind every view of it).

        Idempotent. The file region is unmapped as soon as no array can reach it: at once if
        nothing else uses it, otherwise when this memmap and the last of its views are gone.
        Arrays never point at unmapped memory; reading and writing them stays valid. After
        close, :meth:`flush` raises :class:`ValueError` and :attr:`closed` is True.

        Parameters
        ----------
        strict : bool, optional
            If True, raise :class:`BufferError` (and change nothing) when anything besides
            this memmap uses the region: memmap views or slices of it, arrays from the same
            :class:`mmarray.Mapping`, or memoryviews of it. Closing a view strictly always
            raises, since the memmap it views is alive. Plain-ndarray views
            (``np.asarray(mm)``, ``mm.view(np.ndarray)``) and memoryviews of the memmap itself
            also keep the region mapped but are not seen by this check.

        Raises
        ------
        BufferError
            ``strict=True`` and other users of the region are alive.
        OSError
            Unmapping failed.

        Examples
        --------
        >>> import mmarray, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "c.bin")
        >>> mm = mmarray.memmap(path, mode="w+", shape=8)
        >>> row = mm[2:4]
        >>> mm.close(strict=True)
        Traceback (most recent call last):
        ...
        BufferError: cannot close strictly: 1 other view(s)/export(s) of the mapping are alive
        >>> mm.close()
        >>> row[:] = 5          # still valid: unmapped once mm and row are gone
        >>> mm.closed, int(mm.sum())
        (True, 10)
        """
        mapping = self._mmap
        if not isinstance(mapping, Mapping):
            return  # maps nothing of ours (a copy, an unpickled memmap): nothing to close
        if not mapping.closed and strict:  # a closed one has nothing to refuse
            others = mapping.exports - 1  # this memmap's own: its base or its view export
            if others > 0:
                raise BufferError(
                    f"cannot close strictly: {others} other view(s)/export(s) of the mapping "
                    f"are alive")
        mapping.close()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called on this memmap or any view of its mapping."""
        mapping = self._mmap
        return isinstance(mapping, Mapping) and mapping.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> Literal[False]:
        self.close()
        return False


memmap.__module__ = "mmarray"


_registered_with_distributed = False


def _register_with_distributed() -> None:
    """Make distributed move an mmarray.memmap between workers by its pickle (a reference),
    not by its ndarray serializer, which copies the data and drops the file: writes a worker
    makes into such a copy are lost. Done once distributed is imported (no import of it here:
    it is optional); called at import and whenever a memmap is pickled."""
    global _registered_with_distributed
    if _registered_with_distributed:
        return
    serialize = sys.modules.get("distributed.protocol.serialize")
    if serialize is None:
        return
    _registered_with_distributed = True
    serialize.dask_serialize.register(memmap)(_dask_dumps)
    serialize.dask_deserialize.register(memmap)(_dask_loads)


_registered_with_dask = False


def _register_with_dask() -> None:
    """Give dask a token for an mmarray.memmap that names the bytes of the file it refers to,
    as a Mapping's and an ArrayRef's do (``__dask_tokenize__``), instead of the token dask
    gives every numpy.memmap: a hash of its contents. A memmap travels by reference, so two
    regions holding the same values (the zeros of a fresh 'w+' file) are different data: with
    one token, dask ran one task for both, and the writes meant for the other region were
    lost. Done once dask's tokenizer is imported (no import of it here: dask is optional);
    called at import and by the post-import hook."""
    global _registered_with_dask
    if _registered_with_dask:
        return
    module = sys.modules.get("dask.tokenize")  # dask >= 2024.2 (the extras ask >= 2024.8)
    normalize = getattr(module, "normalize_token", None)
    if normalize is None:
        return
    _registered_with_dask = True
    normalize.register(memmap)(_dask_token)


def _dask_token(x: memmap) -> Any:
    """dask's token for ``x``: the file and the bytes its reference (its pickle) names, with
    the mode. A writable memmap that has no reference (a file object without a name, a file
    deleted since) is named by the memory it maps, which no other region shares while it
    lives. Mode 'c', and a memmap that maps nothing, pickle a copy: dask's own token for a
    numpy.memmap (its contents)."""
    if isinstance(x._mmap, Mapping) and x.mode in ("r", "r+", "w+"):
        cls = (type(x).__module__, type(x).__qualname__, x.mode, x.offset)
        try:
            reference = ref(x.view(_ndarray))
        except (TypeError, ValueError):
            if x.mode != "r":
                return ("mmarray.memmap in memory", *cls, x.__array_interface__["data"][0],
                        x.dtype.str, x.dtype.descr, x.shape, x.strides)
        else:
            return ("mmarray.memmap", *cls, reference.__dask_tokenize__())
    module = sys.modules["dask.tokenize"]  # imported: this runs inside its tokenize()
    return module.normalize_token.dispatch(np.memmap)(x)


def _dask_dumps(x: memmap) -> tuple[dict[str, Any], list[bytes]]:
    return {}, [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL)]


def _dask_loads(header: dict[str, Any], frames: list[bytes]) -> memmap:
    if not isinstance(frames, (list, tuple)) or len(frames) != 1 or \
            not isinstance(frames[0], (bytes, bytearray, memoryview)):
        raise ValueError(f"an mmarray.memmap is sent as one frame of pickle bytes; got "
                         f"{frames!r:.80}")
    try:
        loaded = pickle.loads(frames[0])
    except Exception as exc:
        raise ValueError(f"the frame sent for an mmarray.memmap is not a valid pickle: "
                         f"{exc}") from None
    if not isinstance(loaded, memmap):
        raise TypeError(f"the frame sent for an mmarray.memmap holds a "
                        f"{type(loaded).__name__}, expected an mmarray.memmap")
    return loaded


# memmap.__array_finalize__ keeps nothing of the array it is given when it raises, and sets
# nothing for an array made from nothing: the engine may build memmaps with numpy's fast
# constructor (its subclasses get ndarray.__new__). Only while this module is compiled: the
# engine does not trust a Python function, whose frame hooks and signal handlers can see.
_engine.trust_array_finalize(memmap)
# mmarray.memmap(...) without type.__call__'s tuple and keyword dict (callgrind: 16% of the
# instructions of a 4 KiB memmap open + close); subclasses keep type.__call__.
_engine.set_class_vectorcall(memmap)


def _memmap_from_ref(reference: ArrayRef, filename: Any, offset: int, mode: str,
                     cls: type[memmap] | None = None) -> memmap:
    """Unpickle a memmap: map the referenced bytes and view them as a ``cls`` (the pickled
    memmap's class, mmarray.memmap or a subclass of it; mmarray.memmap for pickles made
    before the class was stored) whose ``filename``, ``offset`` and ``mode`` are the pickled
    one's."""
    if cls is None:
        cls = memmap
    if not isinstance(reference, ArrayRef) or mode not in ("r", "r+") or \
            reference.writable != (mode == "r+"):
        raise ValueError(f"a pickled mmarray.memmap holds an ArrayRef and mode 'r' (read-only) "
                         f"or 'r+' (writable), got {type(reference).__name__} and mode "
                         f"{mode!r:.50}")
    if not (isinstance(cls, type) and issubclass(cls, memmap)):
        # Named without repr(): a crafted class's metaclass may make that raise.
        got = (f"class {getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', '?')}"
               if isinstance(cls, type) else f"a {type(cls).__name__}")
        raise TypeError(f"a pickled mmarray.memmap is rebuilt as mmarray.memmap or a subclass "
                        f"of it, got {got:.120}")
    array = reference.array
    self = array.view(cls)
    self._mmap = _mapping_of(array)
    self.filename = filename
    self.offset = offset
    self.mode = mode
    return self


def _new_memmap(subtype: type[_M], filename: StrOrBytesPath | _FileObject,
                dtype: DTypeLike, mode: Mode, offset: SupportsIndex,
                shape: ShapeLike | None, order: Literal["C", "F", "A", "K"] | None,
                on_fd: int | None = None) -> _M:
    """:class:`memmap`'s general path. With ``on_fd``, the file behind that descriptor is
    mapped in place of ``filename``, which still names it (in errors and the ``filename``
    attributes): a file :func:`open_memmap` writes under a temporary name."""
    spec = _MODES.get(mode) if type(mode) is str else None
    if spec is None:  # a bad mode raises in _check_mode; a str subclass passes
        spec = _MODES[_check_mode(mode)]
    mode, access, flags = spec
    if mode == "w+" and shape is None:
        raise ValueError("shape must be given if mode == 'w+'")
    dt = _check_dtype(dtype)
    if type(offset) is not int:
        offset = operator.index(offset)
    _check_offset(offset)
    if order != "C":
        order = _check_order(order)

    if shape is None:
        _check_sized(dt)  # numpy.memmap divides by the itemsize here (ZeroDivisionError)
        length = _TO_END
    else:
        if not isinstance(shape, (tuple, list)):
            try:  # numpy.memmap takes any integer (np.int64 too) as a 1-D length
                shape = (operator.index(shape),)  # type: ignore[arg-type]  # an integer here
            except TypeError:
                pass
        shape, length = _check_shape(shape, dt.itemsize)
        _check_end(offset, length)

    # The file: numpy.memmap's rules for what is a file object and what `filename` becomes.
    path: StrOrBytesPath | None
    fd: int | None
    attr_name: StrPath | None  # numpy keeps a resolved pathlib.Path for a path object
    error_name: str | None
    path = fd = None
    if type(filename) is str:  # the common case, without the generic calls
        if not filename:
            raise FileNotFoundError(2, "No such file or directory", filename)
        path = filename
        attr_name = error_name = _abspath(filename)
    elif hasattr(filename, "read"):
        _check_writable_file(filename, mode)
        if hasattr(filename, "flush"):
            filename.flush()  # buffered writes must reach the file before it is sized
        fd = fileno_of(filename)
        name = getattr(filename, "name", None)
        attr_name = error_name = _abspath(name) if isinstance(name, str) else None
        flags &= ~_engine.CREATE  # mode 'w+' on a file object grows it, never truncates
    else:
        path = _fspath(filename)
        if not path:
            raise FileNotFoundError(2, "No such file or directory", path)
        if isinstance(filename, str):
            attr_name = error_name = _abspath(path)  # type: ignore[arg-type]  # a str
        elif isinstance(filename, os.PathLike):  # numpy keeps a resolved pathlib.Path
            attr_name = _resolved_path(filename)
            error_name = str(attr_name)
        else:
            attr_name = None  # numpy.memmap gives None for a bytes path
            error_name = _abspath(os.fsdecode(path))
    if on_fd is not None:  # the same names, another file: the one open as on_fd
        path, fd = None, on_fd
        flags &= ~_engine.CREATE

    def map_it(length: int, shape: tuple[int, ...] | None) -> Mapping:
        return map_region(path=path, fd=fd, access=access, offset=offset, length=length,
                          flags=flags, dtype=dt, shape=shape, order=order, mode=mode,
                          filename=error_name)

    def map_empty(shape: tuple[int, ...] | None) -> Mapping:
        # numpy gives an empty array, or an error for an empty file in mode 'r'/'c'. The
        # engine still checks, creates or grows the file as for data.
        if mode in ("r", "c") and _file_size(path, fd) == 0:
            raise ValueError(_EMPTY_FILE)
        return map_it(0, shape)

    if length == 0:
        mapping = map_empty(shape)
    else:
        try:
            mapping = map_it(length, shape)
        except SizeNotMultipleError as exc:
            raise ValueError(
                f"Size of available data is not a multiple of the data-type size: "
                f"{exc.nbytes} bytes after offset {offset} in {error_name!r}, itemsize "
                f"{dt.itemsize} of dtype {dt}; give a shape") from None
        except ValueError:
            # Nothing after offset (the engine's E_EMPTY): an empty memmap as numpy makes
            # one. Anything else re-raises the engine's error.
            if shape is not None or _file_size(path, fd) != offset:
                raise
            mapping = map_empty((0,))

    self = mapping._array_of(subtype)  # shape, dtype and order are the mapping's
    self._mmap = mapping
    self.offset = offset
    self.mode = mode
    self.filename = attr_name  # type: ignore[assignment]  # numpy stores a Path too
    return self


def _resolved_path(path: Any) -> Any:
    try:
        return path.resolve()
    except AttributeError:  # an os.PathLike that is not a pathlib object
        import pathlib

        return pathlib.Path(_fspath(path)).resolve()


def _header_on(fd: int, header: dict[str, Any], version: tuple[int, int] | None) -> int:
    """Write the .npy header at the start of the (new, empty) file open as ``fd``; return the
    data offset."""
    with open(fd, "wb", closefd=False) as fp:
        if version is None:  # the oldest version that holds the header, as np.save picks
            fp.write(_npyformat.header_bytes(header))
        elif version == (1, 0):
            _npy_format.write_array_header_1_0(fp, header)
        elif version == (2, 0):
            _npy_format.write_array_header_2_0(fp, header)
        else:
            fp.write(_npyformat._header_3_0(header))
        return fp.tell()


def _create_npy(filename: StrPath, header: dict[str, Any], version: tuple[int, int] | None,
                dtype: np.dtype[Any], shape: Any, order: Literal["C", "F"],
                mode: Mode) -> memmap:
    """open_memmap's mode ``'w+'``: a new .npy file mapped ``'r+'``, made whole or not at all.

    The header and the data's room are made in a temporary file next to the target
    (:func:`mmarray._npyformat.temp_sibling`), which is mapped and only then renamed over
    the target: a failure (a full disk, a bad shape, an interrupt) leaves an existing file as
    it was and creates none. As numpy's ``open(filename, 'w+b')`` would truncate it, a file
    this process maps is refused (ValueError), and a symbolic link's target is replaced; an
    existing file keeps its permission bits (not its owner or hard links: it is a new file).
    """
    name = os.fspath(filename)
    if ("\0" if isinstance(name, str) else b"\0") in name:
        raise ValueError(f"embedded null byte in the file name {name!r}")
    path, perms = _npyformat.replace_target(name)  # type: ignore[no-untyped-call, unused-ignore]

    def build(fd: int) -> memmap:
        offset = _header_on(fd, header, version)
        return _with_header(_new_memmap(memmap, filename, dtype, mode, offset, shape, order,
                                        on_fd=fd), offset)

    def release(array: memmap) -> None:
        mapping = _mapping_of(array)
        if mapping is not None:
            mapping.close()

    def create() -> memmap:
        array: memmap = _npyformat.create_mapped(path, perms, build, release)
        return array

    return _engine.truncate_guarded(path, path, create)


def _check_version(version: tuple[int, int] | None) -> None:
    """numpy's check of a .npy format version, with its message."""
    if version not in _VERSIONS:
        raise ValueError(f"we only support format version (1,0), (2,0), and (3,0), not "
                         f"{version}")


def open_memmap(filename: StrPath, mode: ShortMode = "r+", dtype: DTypeLike | None = None,
                shape: tuple[int, ...] | None = None, fortran_order: bool = False,
                version: tuple[int, int] | None = None, *,
                max_header_size: int = _npyformat.MAX_HEADER_SIZE) -> memmap:
    """Open a ``.npy`` file as a memory-mapped array: :func:`numpy.lib.format.open_memmap` on
    mmarray's engine.

    Same signature, behaviour and errors as numpy's; the header is read and written by
    :mod:`numpy.lib.format` itself. Returns an :class:`mmarray.memmap`.

    Parameters
    ----------
    filename : str or os.PathLike
        The file. Not a file object.
    mode : str, optional
        ``'r+'`` (default), ``'r'``, ``'c'`` map an existing file; ``'w+'`` creates one
        (`dtype` and `shape` needed) and is then mapped as ``'r+'``.
    dtype : data-type, optional
        Element type when creating (default ``float64``); ignored otherwise.
    shape : tuple of int, optional
        Shape when creating; ignored otherwise.
    fortran_order : bool, optional
        Create a Fortran-ordered array.
    version : tuple of int or None, optional
        The ``.npy`` format version when creating; None picks the oldest that fits.
    max_header_size : int, optional
        Largest header accepted when reading (see :func:`numpy.load`).

    Returns
    -------
    memmap

    Raises
    ------
    ValueError
        A file object was given, the header or version is invalid or too large, or the dtype
        holds Python objects.
    OSError
        The file cannot be opened or mapped.

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.npy")
    >>> with mmarray.open_memmap(path, mode="w+", dtype=np.int16, shape=(2, 3)) as a:
    ...     a[:] = [[1, 2, 3], [4, 5, 6]]
    ...     a.flush()
    >>> np.load(path).tolist()
    [[1, 2, 3], [4, 5, 6]]
    >>> b = mmarray.open_memmap(path, mode="r")
    >>> type(b).__name__, b.dtype, b.shape
    ('memmap', dtype('int16'), (2, 3))
    """
    if _npy_format.isfileobj(filename):
        raise ValueError("Filename must be a string or a path-like object."
                         "  Memmap cannot use existing file handles.")
    if "w" in mode:
        _check_version(version)
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise ValueError("Array can't be memory-mapped: Python objects in dtype.")
        header = {
            "descr": _npy_format.dtype_to_descr(dtype),
            "fortran_order": fortran_order,
            "shape": shape,
        }
        # mapped 'r+' once written ('w+'); another mode is refused by memmap, as numpy's is
        return _create_npy(filename, header, version, dtype, shape,
                           "F" if fortran_order else "C", "r+" if mode == "w+" else mode)
    else:
        with open(os.fspath(filename), "rb") as fp:
            version = _npy_format.read_magic(fp)
            _check_version(version)
            shape, fortran_order, dtype = _npyformat._READERS[version](
                fp, max_header_size=max_header_size)
            if dtype.hasobject:  # type: ignore[union-attr]  # a numpy.dtype from the header
                raise ValueError("Array can't be memory-mapped: Python objects in dtype.")
            offset = fp.tell()
    return _with_header(memmap(filename, dtype=dtype, shape=shape,
                               order="F" if fortran_order else "C", mode=mode, offset=offset),
                        offset)


def _with_header(array: memmap, offset: int) -> memmap:
    """``array``, its mapping marked as the data of a .npy whose header is ``[0, offset)``:
    a reference (a pickle) carries that header, and its receiver maps only the same."""
    mapping = _mapping_of(array)
    if mapping is not None:
        mapping._format = offset
    return array


_register_with_distributed()
_register_with_dask()
if not (_registered_with_distributed and _registered_with_dask):
    # distributed or dask imported later: register when it is
    from mmarray import _posthook
    if not _registered_with_distributed:
        _posthook.when_imported("distributed.protocol.serialize", _register_with_distributed)
    if not _registered_with_dask:
        _posthook.when_imported("dask.tokenize", _register_with_dask)
