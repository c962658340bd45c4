"""Mapped ``.npy`` files: map only the data (or a range of rows of it) of an open ``.npy``,
and create new ones.

`map_npy` maps the data of a ``.npy`` that `mmarray.load` (``_load``) opened; `create_npy`
writes a new ``.npy`` and maps its data writable. The format itself (header parsing and
writing) is ``_npyformat``'s.
"""
from __future__ import annotations

import errno
import functools
import io
import operator
import os
from typing import Any

import numpy as np
from numpy.lib import format as _format

from mmarray import _api, _append, _engine, _mapping
from mmarray import _npyformat as _fmt
from mmarray._mapping import Mapping, _resize_dims

__all__ = ["create_npy", "NpyMapping"]


class NpyMapping(Mapping):
    """A writable mapping of the whole data of a ``.npy`` file (``mmarray.load(path,
    mode="r+")``, :func:`create_npy`): :meth:`resize` grows or shrinks it along its growth
    axis and rewrites the shape in the header in place."""

    __slots__ = ()
    _pickle_kind = "npy"

    # The header is the file's first ``offset`` bytes (the whole data follows it), so its
    # length is read from the engine's offset, not kept apart: a rebase onto a rewritten
    # copy (resize) changes both in one step, with no bytecode in between where an
    # exception could leave them disagreeing (later resizes were then refused).
    @property
    def _header_length(self) -> int:
        return self.offset

    @property
    def _format(self) -> int:
        """The header ``[0, offset)``: what a reference re-checks (``Mapping._format``)."""
        return self.offset

    @_format.setter
    def _format(self, value: Any) -> None:
        pass  # derived from the offset (see _header_length); set for plain Mappings

    def resize(self, shape: Any, *, truncate: bool = False) -> None:
        """Change the length of the growth axis (the first for C order, the last for
        Fortran order) and rewrite the header's shape in place.

        ``shape`` is the new length of that axis (an int) or the whole new shape, whose
        other dimensions must be the file's. Growing writes the data first and the header
        after; shrinking writes the header first, so the file never says more data than it
        holds. Otherwise as :meth:`Mapping.resize`.

        Raises
        ------
        ValueError
            Another dimension changes, the array is 0-d, the file's header is not the one
            this mapping was made from, or (to grow) bytes follow the data in the file:
            another array saved after this one, or rows a shrink without ``truncate`` left,
            which a larger shape would take as rows.

        numpy's headers have room for the growth axis to reach 21 digits; a header without
        room is rewritten once with room (a copy of the file written, synced and renamed
        over it: arrays made before keep the old file's data), and the mapping moves to it.
        Other mappings of the file stay on the old one: another process's, or that of a
        child forked while the copy is written; their writes no longer reach the file at
        the name (in this process, the rewrite is refused while another mapping of the file
        is open).

        Examples
        --------
        >>> import mmarray, numpy as np, tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "grow.npy")
        >>> np.save(path, np.ones((2, 3)))
        >>> with mmarray.load(path, mode="r+") as m:
        ...     m.resize(5)
        ...     m.array[2:] = 2
        >>> np.load(path).sum()
        np.float64(24.0)
        """
        old = self.shape
        if not old:
            raise ValueError("a 0-d .npy has no axis to grow")
        axis = 0 if self.order == "C" else len(old) - 1
        try:
            rows = operator.index(shape)
        except TypeError:
            new = _resize_dims(shape)
        else:
            if rows < 0:
                raise ValueError(f"the new length {rows} of axis {axis} is negative; expected "
                                 f"a length >= 0")
            new = old[:axis] + (rows,) + old[axis + 1:]
        if len(new) != len(old) or any(a != b for i, (a, b) in enumerate(zip(new, old))
                                       if i != axis):
            raise ValueError(f"a .npy of shape {old} grows along axis {axis} only; got shape "
                             f"{new}")
        if self.closed:
            raise ValueError("mapping is closed")
        if self.mode not in ("r+", "w+"):  # (a mapping unpickled with another mode)
            raise ValueError(f"resize needs a writable mapping (mode 'r+' or 'w+'), this one "
                             f"has mode {self.mode!r}")
        self._refuse_if_faulted("resize()")
        filename = self.filename
        if filename is None:
            raise ValueError("resize reopens the file by name, and this mapping was made from "
                             "a file object without one")
        nbytes = self.dtype.itemsize * _prod(new)
        if nbytes == 0:
            raise ValueError(f"shape {new} is zero bytes; a mapping resizes to at least one "
                             f"byte (close it instead)")
        # A rewritten header is at most numpy's (which holds 21 digits on the growth axis).
        if self._header_length + 4096 + nbytes >= 1 << 63:
            raise ValueError(f"shape {new} of dtype {self.dtype} is {nbytes} bytes, more than "
                             f"a .npy file can hold; expected a size below 2**63 bytes")
        # Until the end, other threads' flush, advise, prefetch, chunks loops, raw buffers
        # and resizes are refused: what the engine would refuse is refused now, before the
        # file is written (a rewrite with room renames a copy over the name).
        self._begin_resize()
        try:
            self._resize_npy(filename, old, new, nbytes, truncate)
        finally:
            self._end_resize()

    def _resize_npy(self, filename: str, old: tuple[int, ...], new: tuple[int, ...],
                    nbytes: int, truncate: bool) -> None:
        # Owned by a FileIO, as append_npy's: an exception landing anywhere cannot leak it.
        held = io.FileIO(filename, "r+")
        fd = held.fileno()
        copy_file = view_file = None
        made: list[str] = []  # the temporary copy's name, if one is made (_with_room)
        try:
            _append._lock(fd)   # as append_npy does: an append and a resize do not interleave
            header = _fmt.read_at(fd, 0, self._header_length)
            found = _fmt.parse_header(header, lambda pos, n: _fmt.read_at(fd, pos, n), None,
                                      repr(filename))
            identity = self._identity()
            st = os.fstat(fd)
            if (identity is not None and (st.st_dev, st.st_ino) != tuple(identity)) or \
                    found[0] != self._header_length or found[1] != self.dtype or \
                    found[2] != old:
                raise ValueError(f"{filename!r} no longer has the header this mapping was made "
                                 f"from: refusing to rewrite it")
            data_end = self.offset + self.nbytes
            # The leftover of a growth that did not finish (a process killed in an append_npy
            # or in this resize: its trailer says so) goes before anything is written, so that
            # no stale trailer outlives this call: read later, after a shrink, it would vouch
            # for rows that are no longer its leftover.
            leftover = st.st_size > data_end and \
                _append._leftover(fd, header, data_end, st.st_size)
            if nbytes > self.nbytes and st.st_size > data_end and not leftover:
                # numpy.load ignores them; a larger shape would claim them as rows (and a
                # rewrite with room would drop them): another array saved after this one
                # (np.save twice into one file), or rows a shrink without truncate left.
                raise ValueError(f"{filename!r} has {st.st_size - data_end} bytes after the "
                                 f"array's data (which ends at byte {data_end}), which a "
                                 f"larger shape would take as rows: refusing to grow it; "
                                 f"expected nothing after the data (truncate the file at "
                                 f"{data_end} bytes if those bytes are not needed)")
            if leftover:
                os.ftruncate(fd, data_end)
            grown = _append._grown_header(header, new, repr(filename))
            if grown is None:
                # No room in the header: the file is rewritten once with numpy's room (a copy
                # renamed over the name; arrays made before keep the old file), and this
                # mapping moves to the copy.
                others = _engine.live_views(st.st_dev, st.st_ino) - \
                    self._own_views(st.st_dev, st.st_ino)
                if others > 0:
                    raise BufferError(f"{filename!r}: its header has no room for shape {new} "
                                      f"and the file would be rewritten, but another mapping "
                                      f"of it is open in this process (it would keep the old "
                                      f"file): close it first")
                # The view moves onto view_file, not onto the locked copy_file: a mapping
                # keeps its open file, and so the lock, alive (see _with_room).
                # The copy is renamed over the name inside the rebase (one step, see
                # Region._rebase): an exception landing between a rename done here and the
                # move left the mapping on the unlinked old file, and its writes were lost.
                view_file, copy_file, target = _append._with_room(
                    fd, filename, self.dtype, old, self.order, self._header_length,
                    self.nbytes, repr(filename), reopen=True, made=made)
                copy = copy_file.fileno()
                first = _fmt.read_at(copy, 0, _fmt.FIRST_READ)
                hlen = _fmt.parse_header(first, lambda pos, n: _fmt.read_at(copy, pos, n),
                                         None, repr(filename))[0]
                tmp = view_file.name  # type: ignore[union-attr]
                try:
                    self._rebase(view_file.fileno(),  # type: ignore[union-attr]
                                 hlen, old, functools.partial(os.replace, tmp, target),
                                 os.fsencode(target))
                except OSError as exc:
                    if exc.filename != tmp:  # not the rename: the map
                        raise
                    raise _fmt.named_error(exc, target, "renaming the complete temporary "
                                           "file over it") from exc
                except ValueError:
                    # Closed by another thread while the copy was renamed over the name:
                    # the rename stands (the same data and shape), so it is made durable.
                    if _append._leads_to(target, view_file.fileno()):  # type: ignore[union-attr]
                        _fmt.fsync_directory(target)
                    raise
                _fmt.fsync_directory(target)
                _append._release(held)
                held, fd = copy_file, copy  # locked by _with_room
                header = _fmt.read_at(fd, 0, hlen)
                grown = _append._grown_header(header, new, repr(filename))
                if grown is None:  # pragma: no cover - numpy's header holds 21 digits
                    raise ValueError(f"{filename!r}: its header cannot hold shape {new}")
            if nbytes > self.nbytes:
                # As append_npy grows a file: a trailer past the new end first, so that a
                # process killed before the header is written leaves a file the next
                # append_npy or resize recognises (and cuts back), then the data, the
                # header, and the trailer cut off. (After a rewrite with room: the copy's.)
                data_end = self.offset + self.nbytes
                new_end = self.offset + nbytes
                trailer = _append.trailer_bytes(data_end, new_end, header, grown)
                try:
                    _append._write_at(fd, trailer, new_end)
                    Mapping.resize(self, new)
                    _fmt.pwrite(fd, grown, 0)
                except BaseException:
                    # Interrupted (KeyboardInterrupt) once the view grew: the rows are in the
                    # file, so the header says so too, or the mapping and the file disagree
                    # for good (later resizes refused, rows written past the header lost).
                    # Before: the file as it was (a trailer written in part included).
                    if self.shape == new:
                        _fmt.pwrite(fd, grown, 0)
                        os.ftruncate(fd, new_end)
                    else:
                        try:
                            os.ftruncate(fd, data_end)
                        except OSError:
                            pass  # a whole trailer left is recognised; the error goes on up
                    raise
                os.ftruncate(fd, new_end)
            else:
                end = self.offset + nbytes
                old_end = self.offset + self.nbytes
                cut = truncate and end < old_end
                if cut:
                    self._check_cut(fd, old_end, end)   # before the header says less
                    # A trailer past the old end until the cut, as a growth writes one past
                    # its new end: a process killed before the header is written leaves the
                    # old header and the trailer, one killed after it the new header, the
                    # dropped rows and the trailer; the next append_npy or resize recognises
                    # either (the trailer names both ends and both headers) and cuts back
                    # to the end the header says. The cut below takes the trailer with it.
                    # With no room for 44 more bytes (a full disk: what a shrink is often
                    # for; a file-size limit; a memfd sealed against growth) it shrinks
                    # unmarked, as before the trailer: header, then cut.
                    trailer = _append.trailer_bytes(end, old_end, grown, header)
                    try:
                        _append._write_at(fd, trailer, old_end)
                    except BaseException as exc:
                        try:
                            os.ftruncate(fd, old_end)   # a trailer written in part
                        except OSError:
                            pass  # a whole trailer left is recognised; the error goes on up
                        if not (isinstance(exc, OSError) and exc.errno in _NO_ROOM):
                            raise
                        marked = False
                    else:
                        marked = True
                try:
                    _fmt.pwrite(fd, grown, 0)
                    if cut:
                        # The view shrinks and the file is cut at its new end in one step
                        # of the engine (Mapping.resize would refuse the trailer as bytes
                        # after the mapping); the checks of Mapping.resize were made above.
                        self._resize(fd, nbytes, new, True, True)
                    else:
                        Mapping.resize(self, new)
                except BaseException:
                    if self.shape == new:
                        # Interrupted once the view shrank: the header says so already, and
                        # the file is cut (or, if the cut failed, it ends in a trailer the
                        # next call recognises).
                        if cut:
                            try:
                                os.ftruncate(fd, end)
                            except OSError:
                                if not marked:
                                    # Nothing marks the rows left after the data: the file
                                    # and the view as they were (a file that can neither
                                    # grow nor shrink: a memfd with both seals).
                                    self._undo_unmarked_shrink(fd, header, old)
                    else:
                        _fmt.pwrite(fd, header, 0)      # the file as it was
                        if cut:
                            try:
                                os.ftruncate(fd, old_end)   # and without the trailer
                            except OSError:
                                pass  # a whole trailer left is recognised
                    raise
        finally:
            try:
                _append._release(held)
            finally:
                if copy_file is not None:
                    _append._release(copy_file)  # a no-op once released as `held`
                # A copy still at its temporary name was not renamed (refused, interrupted).
                _append._discard_unrenamed(made, view_file)

    def _undo_unmarked_shrink(self, fd: int, header: bytes, old: tuple[int, ...]) -> None:
        """Put back the old header, then the old view, after a shrink without a trailer
        whose cut failed; best effort: the error of the cut goes on up either way."""
        try:
            _fmt.pwrite(fd, header, 0)
            self._resize(fd, self.dtype.itemsize * _prod(old), old, False, False)
        except Exception:
            pass


#: What a write past the end fails with when the file cannot grow (ENOSPC, EDQUOT, EFBIG,
#: and EPERM from a memfd sealed with F_SEAL_GROW, memfd_create(2)).
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}


class NpyRowsMapping(Mapping):
    """A writable mapping of some rows of a ``.npy`` (``load(..., rows=...)``): its size is
    the header's business, so it does not resize."""

    __slots__ = ()
    _pickle_kind = "npy_rows"

    def resize(self, shape: Any, *, truncate: bool = False) -> None:
        raise ValueError("this mapping holds some rows of a .npy file; load the whole file "
                         "(without rows=) to resize it")


_mapping._REOPEN_CLASSES.update(npy=NpyMapping, npy_rows=NpyRowsMapping)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def map_npy(fd, base, first, mode, access, rows, filename, name, max_header_size):
    """Map the data (or ``rows`` of it) of the .npy at ``base`` in ``fd``, whose first bytes
    are ``first``; return (mapping, offset just past its data)."""
    hlen, dt, shape, order, nbytes = _fmt.parse_header(
        first, lambda pos, n: _fmt.read_at(fd, base + pos, n), None, name, max_header_size)
    offset = base + hlen
    if rows is None:
        growable = base == 0 and access == _engine.WRITE and nbytes > 0
        try:
            m = _fmt.map_region(fd, access, offset, nbytes, dt, shape, order, mode, filename,
                                NpyMapping if growable else None)
            if base == 0:  # (a file object's .npy at another base is not pickled)
                m._format = offset  # the header [0, offset): what a reference re-checks
        except ValueError:  # E_RANGE: the data runs past the end of the file
            if nbytes:
                _check_size(fd, offset, nbytes, dt, shape, name)
            raise
    else:
        axis, lo, hi = _fmt.row_bounds(rows, shape, order)
        _check_size(fd, offset, nbytes, dt, shape, name)
        per = nbytes // shape[axis] if shape[axis] else 0
        sub = shape[:axis] + (hi - lo,) + shape[axis + 1:]
        m = _fmt.map_region(fd, access, offset + lo * per, (hi - lo) * per, dt, sub, order,
                            mode, filename,
                            NpyRowsMapping if access == _engine.WRITE else None)
        if base == 0:
            m._format = offset
    return m, offset + nbytes


def _check_size(fd, offset, nbytes, dt, shape, name):
    size = os.fstat(fd).st_size
    if offset + nbytes > size:
        raise ValueError(
            f"{name}: the header says {_api._short_repr(shape)} x {dt} = {nbytes} bytes of "
            f"data from offset {offset}, but the file has only {max(size - offset, 0)} bytes "
            f"there ({size} in all): truncated or corrupt .npy")


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
        A dtype holding objects, a shape not made of integers, a file
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
        shape, _ = _api._check_shape(shape, 1)  # any integer (np.int64 too) or ints
        dt, shape = _engine.without_subarray(dt, shape)
    shape, nbytes = _api._check_shape(shape, dt.itemsize)
    header = _fmt.header_bytes({"descr": _format.dtype_to_descr(dt),
                                "fortran_order": fortran_order, "shape": shape})
    path, perms = _fmt.replace_target(file)
    filename = os.path.abspath(path)
    order = "F" if fortran_order else "C"

    def build(fd: int) -> Mapping:
        _fmt.write_all(fd, header)
        m = _fmt.map_region(fd, _engine.WRITE, len(header), nbytes, dt, shape, order, "w+",
                            filename, NpyMapping if nbytes else None, grow=True)
        m._format = len(header)
        return m

    return _fmt.create_mapped(path, perms, build, Mapping.close)
