"""dask arrays over mapped files: :func:`to_dask`.

dask is optional (``pip install "mmarray[dask]"``) and imported only when called. The
graph holds one :class:`~mmarray.ArrayRef` (a few hundred bytes); each task maps just the
bytes of its chunk, in whichever process or worker runs it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mmarray import _load
from mmarray._api import open as _open
from mmarray._npz import InMemoryMember, NpzMapping
from mmarray._share import ref

if TYPE_CHECKING:
    import dask.array
    from _typeshed import StrPath

__all__ = ["to_dask"]

# Arguments that make to_dask map a raw file with mmarray.open rather than read a header.
_RAW = ("dtype", "shape", "offset", "order")


def to_dask(file: StrPath, chunks: Any = "auto", *, key: str | None = None,
            name: str | None = None, **arguments: Any) -> dask.array.Array:
    """A dask array over a mapped file, each task mapping only its chunk.

    Parameters
    ----------
    file : str or os.PathLike
        A raw file (give ``dtype`` and, as for :func:`mmarray.open`, ``shape``, ``offset``,
        ``order``), a ``.npy`` file or a ``.npz`` archive (name the member with ``key``).
    chunks : optional
        As for :func:`dask.array.from_array` (default ``"auto"``).
    key : str, optional
        ``.npz`` only: the member (needed unless the archive holds exactly one).
    name : str, optional
        The dask array's name; by default a token of the file's identity, modification
        time and region, so the same unchanged file gives the same name.
    **arguments
        For a raw file, :func:`mmarray.open`'s (``mode`` defaults to ``'r'``); otherwise
        :func:`mmarray.load`'s (``mode``, ``rows``, ``compressed``, ``max_header_size``).

    Raises
    ------
    ImportError
        dask is not installed.
    ValueError
        ``mode='w+'`` (to_dask maps data that exists), or a ``.npz`` with several members
        and no ``key``.
    KeyError
        ``key`` is not a member of the archive.
    TypeError
        Mode ``'c'``, or a compressed ``.npz`` member (it is not mapped).

    Examples
    --------
    >>> import mmarray, numpy as np, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "d.npy")
    >>> np.save(path, np.arange(1000.0).reshape(100, 10))
    >>> x = mmarray.to_dask(path, chunks=(25, 10))
    >>> x.numblocks, float(x.sum().compute(scheduler="threads"))
    ((4, 1), 499500.0)
    """
    try:
        import dask.array as da
    except ImportError as exc:  # pragma: no cover - dask is in the test extra
        raise ImportError(f"mmarray.to_dask needs dask: pip install 'mmarray[dask]' "
                          f"({exc})") from None
    mode = arguments.pop("mode", "r")
    if mode in ("w+", "write"):
        raise ValueError("to_dask maps data that exists; mode 'w+' would reset the file "
                         "(create it with mmarray.open or mmarray.create_npy first)")
    if any(k in arguments for k in _RAW):
        if key is not None:
            raise TypeError("key names a .npz member; a raw file (dtype=...) has none")
        with _open(file, mode=mode, **arguments) as m:
            reference = ref(m.array)
    else:
        reference = _reference_of_loaded(file, mode, key, arguments)
    from_array: Any = da.from_array  # dask has no type hints
    array: dask.array.Array = from_array(reference, chunks=chunks, name=name)
    return array


def _reference_of_loaded(file: Any, mode: Any, key: str | None,
                         arguments: dict[str, Any]) -> Any:
    load: Any = _load.load  # untyped: it returns a Mapping or an NpzMapping
    loaded = load(file, mode, **arguments)
    if not isinstance(loaded, NpzMapping):
        if key is not None:
            loaded.close()
            raise TypeError(f"key names a .npz member, but {file!r} is a .npy file")
        with loaded:
            return ref(loaded.array)
    with loaded:
        if key is None:
            names = list(loaded)
            if len(names) != 1:
                raise ValueError(f"{file!r} holds {len(names)} members {names[:8]!r}; name "
                                 f"one with key=")
            key = names[0]
        member = loaded[key]
        if not isinstance(member, InMemoryMember):
            return ref(member.array)
        raise TypeError(f"member {key!r} of {file!r} is compressed: it is inflated in memory, "
                        f"not mapped, so it cannot be shared by reference; save it "
                        f"uncompressed (np.savez or mmarray.save_npz)")
