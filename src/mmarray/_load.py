"""`load`: open a ``.npy`` or ``.npz`` file, told apart by its first bytes, and hand it to
the ``.npy`` side (``_npy``) or the ``.npz`` side (``_npz``).

A ``.npy`` whose version 1.0 header numpy wrote is mapped here directly (the fast path: one
read, one cached or regex-parsed header, one map).
"""
from __future__ import annotations

import os

from mmarray import _api, _engine, _mapping, _npy, _npz
from mmarray import _npyformat as _fmt
from mmarray._npyformat import MAX_HEADER_SIZE

__all__ = ["load"]

_READ = _engine.READ
_WRITE = _engine.WRITE
_MAGIC_V1 = _fmt.MAGIC_V1
_header_cache = _fmt.header_cache
_parse_fast = _fmt.parse_fast
_map_by_header = _engine.map_by_header
_Mapping = _mapping.Mapping
# Bytes the fast path reads: the header numpy writes is 128 bytes for most arrays, longer
# for many dimensions or a long descr; a longer one takes the general path.
_HEAD = 512

# mode -> (access, normalized mode). 'w+' is refused by check_load_mode (an existing file's
# data).
_LOAD_MODES = {"r": _engine.READ, "r+": _engine.WRITE, "c": _engine.COPY}
_MODE_ALIASES = {"readonly": "r", "readwrite": "r+", "copyonwrite": "c"}
_abspaths: dict = {}      # absolute str path -> os.path.abspath(path)
# Whole .npy prefixes (magic to the header's newline) _known_header answered for -> its answer,
# which the engine looks up itself for the next file with the same prefix (a dataset's files
# share one header), without calling back; _prefix_lengths: the lengths it tries, those of
# the last few distinct answered prefixes, the latest first (datasets whose headers differ in
# length may alternate).
_prefixes: dict = {}
_prefix_lengths: tuple = ()


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
        with a step, or with a ``.npz``, a path holding a null byte, a file object whose
        ``fileno()`` is a negative or too large int, or mode ``'r+'`` on a ``.npz`` file
        object open in append mode (its CRC-32 rewrites would land at the end).
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
        if rows is None and max_header_size == MAX_HEADER_SIZE:
            # The common case in one open, one read and one map (the engine's), with a header
            # seen before; None for anything else or any failure, which the path below does.
            m = _map_by_header(file, access, mode, _HEAD, _known_header,
                               _npy.NpyMapping if access == _WRITE else _Mapping, _prefixes,
                               _prefix_lengths)
            if m is not None:
                m._format = m.offset  # the header [0, offset): what a reference re-checks
                return m
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
        fd = os.open(path, _fmt.O_READ if access != _engine.WRITE else _fmt.O_WRITE)
    except ValueError:
        _fmt.check_path(path)  # a null byte: say so with the path
        raise
    try:
        first = os.read(fd, _fmt.FIRST_READ)
        # Fast path: no rows, a version 1.0 header as numpy writes it, whole in `first`.
        if rows is None and first[:8] == _fmt.MAGIC_V1 and len(first) >= 10:
            end = 10 + (first[8] | first[9] << 8)
            hit = None
            if end <= len(first) and end - 10 <= max_header_size:
                hb = first[10:end]
                hit = _fmt.header_cache.get(hb) or _fmt.parse_fast(hb, repr(path))
            if hit is not None and hit[3]:
                growable = access == _engine.WRITE
                try:
                    m = _fmt.map_region(fd, access, end, hit[3], hit[0], hit[1], hit[2],
                                        mode, _abspath(path),
                                        _npy.NpyMapping if growable else None)
                except ValueError:
                    pass  # data past the end of the file: the general path says so
                else:
                    m._format = end
                    return m
        if first[:6] == _fmt.MAGIC:
            return _npy.map_npy(fd, 0, first, mode, access, rows, _abspath(path),
                                repr(path), max_header_size)[0]
        return _other(fd, first, path, _abspath(path), repr(path), mode, access, rows,
                      compressed, max_header_size)
    finally:
        os.close(fd)


def _known_header(first):
    """(data offset, nbytes, dtype, shape, order) of a .npy whose first bytes are ``first``
    and whose version 1.0 header, whole in ``first`` and within the default
    ``max_header_size``, is one numpy wrote (the header cache holds it, or the regular
    expression of ``_npyformat.parse_fast`` reads it now); None for anything else: the
    general path reads, parses and checks it, and names the file in its errors."""
    if first[:8] != _MAGIC_V1 or len(first) < 10:
        return None
    end = 10 + (first[8] | first[9] << 8)
    if end > len(first) or end - 10 > MAX_HEADER_SIZE:
        return None
    hb = first[10:end]
    hit = _header_cache.get(hb)
    if hit is None:
        try:
            hit = _parse_fast(hb, "the .npy header")
        except ValueError:
            return None  # the general path parses it again, and its error names the file
    if hit is None or not hit[3]:
        return None  # not numpy's, or no data: an empty mapping (the general path makes it)
    global _prefix_lengths
    answer = end, hit[3], hit[0], hit[1], hit[2]
    if hit[0].names is not None:
        return answer  # a dtype with fields is mutable: each file gets its own, unshared
    if len(_prefixes) >= _fmt.CACHE_MAX:
        _prefixes.clear()
    _prefixes[first[:end]] = answer  # the answer depends on these bytes and no others
    if end not in _prefix_lengths:
        _prefix_lengths = ((end,) + _prefix_lengths)[:4]
    return answer


def _abspath(path):
    """os.path.abspath, remembered for absolute str paths (they do not depend on the cwd)."""
    try:
        return _abspaths[path]
    except (KeyError, TypeError):
        pass
    result = os.path.abspath(path)
    if type(path) is str and os.path.isabs(path):
        if len(_abspaths) >= _fmt.CACHE_MAX:
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
    first = _fmt.read_at(fd, base, _fmt.FIRST_READ)
    name = getattr(file, "name", None)
    name = repr(name) if isinstance(name, (str, bytes)) else repr(file)
    if first[:6] == _fmt.MAGIC:
        m, end = _npy.map_npy(fd, base, first, mode, access, rows, None, name, max_header_size)
        if hasattr(file, "seek"):
            file.seek(end)
        return m
    return _other(fd, first, file, None, name, mode, access, rows, compressed,
                  max_header_size)


def _other(fd, first, target, filename, name, mode, access, rows, compressed,
           max_header_size):
    """Not a .npy: an .npz."""
    if first[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if rows is not None:
            raise ValueError(f"rows={rows!r} applies to .npy files; {name} is a .npz archive "
                             f"(select a member, then slice its array)")
        return _npz.load_npz(fd, first, target, filename, name, mode, access, compressed,
                             max_header_size)
    if len(first) < 6 and _fmt.MAGIC.startswith(first):
        raise ValueError(f"{name}: truncated .npy: {len(first)} bytes, fewer than the 6-byte "
                         f"magic string {_fmt.MAGIC!r}")
    hint = " (a pickle: np.load reads it only with allow_pickle=True; it cannot be mapped)" \
        if first[:1] == b"\x80" else ""
    raise ValueError(f"{name}: neither a .npy file (magic {_fmt.MAGIC!r}) nor a .npz archive "
                     f"(zip signature b'PK\\x03\\x04'): starts with {first[:8]!r}{hint}")
