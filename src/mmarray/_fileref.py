"""What a pickled reference carries to find its file again, and the check its receiver makes.

A :class:`~mmarray.Mapping`, an :class:`~mmarray.ArrayRef` and an ``mmarray.memmap`` pickle
as a file name, a byte range and the file's identity: its device and inode numbers
(``os.stat``'s ``st_dev`` and ``st_ino``; on Windows the volume serial number and file
index), its birth time where the filesystem keeps one (an inode number goes to a new file as
soon as the old one is deleted), and the host they were read on. The receiver maps the range
by name and then compares the identity of the file it actually mapped -- read from the open
descriptor, so nothing can swap the file between the check and the map -- with the pickled
one. Device and inode numbers mean something only on the host (and boot) that read them, so
another host checks only that the file is long enough, which the map itself does: a file
shorter than the range is refused, never grown.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Callable, Optional

from mmarray import _engine

__all__ = ["FileIdentity", "host_id", "verify"]

#: (st_dev, st_ino, birth time or 0) of a mapped file, or None for a region that maps no byte.
FileIdentity = Optional["tuple[int, ...]"]

_host: str | None = None


def host_id() -> str:
    """This host and boot: the node name and, where Linux gives one, the boot id.

    Device numbers can change across a reboot (they are assigned as devices appear), so a
    reference pickled before a reboot is checked as one from another host would be.
    """
    global _host
    if _host is None:
        node = os.uname().nodename if hasattr(os, "uname") else os.environ.get(
            "COMPUTERNAME", "")
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                boot = f.read().strip()
        except OSError:  # not Linux, or /proc is not mounted
            boot = ""
        _host = f"{node}/{boot}"
    return _host


def with_birth(filename: str, identity: tuple[int, ...]) -> tuple[int, int, int]:
    """(st_dev, st_ino, birth time) for the file of a view whose (st_dev, st_ino) is
    ``identity``, the birth time read by name (0 where the filesystem keeps none).

    Raises ValueError when the name no longer leads to that file (replaced, renamed or
    deleted since it was mapped): a reference pickled now would let a receiver map whatever
    the name leads to, with no birth time to tell a reused inode number from the old one.
    """
    dev, ino = identity[0], identity[1]
    try:
        now = _engine.path_identity(_encode(filename))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{filename!r} cannot be pickled by reference: the file it names "
                         f"cannot be read now ({exc}); it was deleted, replaced or renamed "
                         f"since it was mapped") from None
    if tuple(now[:2]) != (dev, ino):
        raise ValueError(f"{filename!r} cannot be pickled by reference: it names another "
                         f"file now (device {now[0]} inode {now[1]}, the mapping has device "
                         f"{dev} inode {ino}); the file was replaced or renamed since it was "
                         f"mapped")
    return (dev, ino, now[2])


#: Offsets, lengths and sizes a reference may hold: what fits a signed 64-bit file offset.
LIMIT = 1 << 63


def check_identity(identity: Any, host: Any, what: str) -> None:
    """TypeError unless ``identity`` and ``host`` are as a pickled ``what`` holds them: None
    or a tuple of three ints >= 0 (device, inode, birth time), and a str."""
    if identity is not None and not (
            type(identity) is tuple and len(identity) == 3
            and all(type(v) is int and 0 <= v < (1 << 64) for v in identity)):
        raise TypeError(f"{what} holds a file identity of three ints >= 0 (device, inode, "
                        f"birth time) or None, got {identity!r:.100}")
    if not isinstance(host, str):
        raise TypeError(f"{what} holds a str host, got {host!r:.100}")


def _encode(path: str) -> bytes:
    """The path as the C layer takes it: UTF-8 on Windows, the file system encoding else."""
    return path.encode("utf-8") if os.name == "nt" else os.fsencode(path)


def verify(mapping: Any, filename: str, identity: FileIdentity, host: str) -> None:
    """Close ``mapping`` and raise ValueError unless it maps the file that was pickled.

    ``mapping`` was just made from ``filename``; ``identity`` and ``host`` are what the
    sender recorded. On another host (or after a reboot) the identity is not comparable and
    the check passes: the map already refused a file too short for the range.
    """
    if identity is None or host != host_id():
        return
    found = mapping._identity()
    if found is None:  # nothing mapped (an empty range): no byte of the file is reachable
        return
    # Device and inode, and the birth time where the sender recorded one: an inode number is
    # given to a new file as soon as the old one is deleted. Read by name once, and required
    # to be the file mapped (a name that moved on since the map is a refusal too).
    expected = tuple(identity)
    expected_birth = expected[2] if len(expected) > 2 else 0
    try:
        now: tuple[int, ...] | None = tuple(_engine.path_identity(_encode(filename)))
    except (OSError, ValueError):
        now = None
    problem = None
    if tuple(found[:2]) != expected[:2]:
        problem = (f"it was device {expected[0]} inode {expected[1]}, now it is device "
                   f"{found[0]} inode {found[1]}")
    elif now is None or now[:2] != tuple(found[:2]):
        problem = "the name no longer leads to the file just mapped"
    elif expected_birth and now[2] != expected_birth:
        problem = (f"device {found[0]} inode {found[1]} was born at another time "
                   f"({now[2] or 'unknown'}, pickled {expected_birth})")
    if problem is not None:
        mapping.close()
        raise ValueError(
            f"{filename!r} is no longer the file that was pickled: {problem} (replaced, "
            f"renamed over or deleted and created again since); refusing to map a different "
            f"file")


#: Bytes a pickled layout may hold (a .npy header is at most ``max_header_size``, 10,000 by
#: default; a .npz member's local header at most 30 + 2 * 65,535).
LAYOUT_MAX = 1 << 24


def read_layout(mapping: Any, filename: str, identity: tuple[int, ...],
                spans: tuple[tuple[int, int], ...], kind: str | None = None
                ) -> tuple[tuple[int, bytes], ...]:
    """``((start, bytes), ...)``: the bytes ``[start, stop)`` of each span of ``spans`` in the
    file of device and inode ``identity[:2]``, read now through ``filename``. These are the
    bytes that say where ``mapping``'s data lies in its file (a ``.npy`` header, a ``.npz``
    member's local header): a reference carries them, and its receiver maps only if the file
    still holds them (:func:`check_layout`). With ``kind`` (the mapping was made from a
    header of that kind: ``"npy"``), the check :data:`HEADER_DESCRIBES` holds for it must
    find that the bytes read still describe ``mapping``.

    Raises ValueError when the name no longer leads to that file, the file no longer holds
    the spans, or a header no longer places the data where ``mapping`` maps it (the file was
    rewritten in place since it was mapped)."""
    if sum(stop - start for start, stop in spans) > LAYOUT_MAX:
        raise ValueError(f"{filename!r} cannot be pickled by reference: its header is over "
                         f"{LAYOUT_MAX} bytes, more than a reference carries; copy the data "
                         f"to a file with a header numpy writes (np.save)")
    try:
        found = _read_spans(filename, spans)
    except OSError as exc:
        raise ValueError(f"{filename!r} cannot be pickled by reference: its header cannot be "
                         f"read now ({exc.strerror or exc})") from None
    if found[0] != tuple(identity[:2]):
        raise ValueError(f"{filename!r} cannot be pickled by reference: the name no longer "
                         f"leads to the mapped file (replaced or renamed since it was mapped)")
    layout = found[1]
    if any(len(data) != stop - start for (start, stop), (_, data) in zip(spans, layout)):
        raise ValueError(f"{filename!r} cannot be pickled by reference: it is shorter than "
                         f"its header now (truncated since it was mapped)")
    describes = HEADER_DESCRIBES[kind] if kind is not None else _describes_nothing
    for start, data in layout:
        problem = describes(mapping, start, data)
        if problem is not None:
            raise ValueError(f"{filename!r} cannot be pickled by reference: {problem}; it was "
                             f"rewritten in place since it was mapped (np.save to the same "
                             f"name, for one), so this mapping no longer maps its data: load "
                             f"it again")
    return layout


def _describes_nothing(mapping: Any, start: int, header: bytes) -> None:
    """The check of a header of no known kind: its bytes travel and are compared as such."""
    return None


def keep_layout(mapping: Any, layout: tuple[tuple[int, bytes], ...]) -> None:
    """Give ``mapping``, just mapped from a reference whose ``layout`` was checked, that
    layout to send on: a pickle of it carries the header checked, not what the file holds
    by then. A .npy header (one span at 0, the magic) is recorded as such (see
    ``Mapping._format``)."""
    spans: Any = tuple((start, start + len(data)) for start, data in layout)
    if len(layout) == 1 and layout[0][0] == 0 and layout[0][1][:6] == NPY_MAGIC:
        spans = len(layout[0][1])
    mapping._format = spans
    mapping._layout_read = (((0, spans),) if type(spans) is int else spans, layout)


def check_layout_field(layout: Any, what: str) -> None:
    """TypeError unless ``layout`` is as a pickled ``what`` holds it: None or a tuple of
    ``(start, bytes)`` pairs, start >= 0, at most :data:`LAYOUT_MAX` bytes in all."""
    if layout is None:
        return
    if not (type(layout) is tuple and len(layout) <= 16 and all(
            type(item) is tuple and len(item) == 2 and type(item[0]) is int
            and 0 <= item[0] < LIMIT and type(item[1]) is bytes for item in layout)
            and sum(len(item[1]) for item in layout) <= LAYOUT_MAX):
        raise TypeError(f"{what} holds a layout of (offset, bytes) pairs, at most "
                        f"{LAYOUT_MAX} bytes in all, or None; got {layout!r:.100}")


#: Magic prefix of a header -> ``check(mapping, start, pickled, now)``: None if the header
#: ``now`` (read at ``start``) still places the data ``mapping`` maps as the ``pickled`` one
#: did, else what changed. Headers without one must be byte for byte the same. The .npy
#: code registers its own (a shape that grew along the growth axis is the same layout).
HEADER_CHECKS: dict[bytes, Callable[[Any, int, bytes, bytes], str | None]] = {}
#: Kind of header ("npy") -> ``check(mapping, start, header)``: None if ``header``, read at
#: ``start`` when ``mapping`` is pickled, still places the data where ``mapping`` maps it;
#: else what differs. The .npy code registers its own. Chosen by what the mapping was made
#: from, never by the bytes read now (a file rewritten in place may hold anything).
HEADER_DESCRIBES: dict[str, Callable[[Any, int, bytes], str | None]] = {}
#: The first bytes of a .npy (numpy.lib.format.MAGIC_PREFIX).
NPY_MAGIC = b"\x93NUMPY"


def check_layout(mapping: Any, filename: str, layout: Any) -> None:
    """Close ``mapping`` and raise ValueError unless the file it maps still holds the bytes of
    ``layout`` (see :func:`read_layout`): a ``.npy`` rewritten in place since the sender
    pickled (``np.save`` to the same name keeps the inode) may hold another array whose data
    starts elsewhere, and the pickled range would read, or write, the wrong bytes (its
    header, for one)."""
    if not layout:
        return
    identity = mapping._identity()
    if identity is None:  # nothing mapped: no byte of the file is reachable
        return
    spans = tuple((start, start + len(data)) for start, data in layout)
    problem = None
    try:
        found = _read_spans(filename, spans)
    except OSError as exc:
        problem = f"its header cannot be read again ({exc.strerror or exc})"
    else:
        if found[0] != tuple(identity[:2]):
            problem = "the name no longer leads to the file just mapped"
    if problem is None:
        for (start, data), (_, now) in zip(layout, found[1]):
            if now == data:
                continue
            same = HEADER_CHECKS.get(data[:6])
            if same is not None and now[:6] == data[:6]:
                problem = same(mapping, start, data, now)
            else:
                problem = (f"its bytes {start} to {start + len(data)} (the header that says "
                           f"where the data lies) are not those pickled")
            if problem is not None:
                break
    if problem is not None:
        mapping.close()
        raise ValueError(f"{filename!r} changed since it was pickled: {problem}; it was "
                         f"rewritten in place (np.save to the same name, for one) and the "
                         f"pickled range may hold other data now. Refusing to map it: "
                         f"load the file again and pickle that")


def _read_spans(filename: str, spans: tuple[tuple[int, int], ...]
                ) -> tuple[tuple[int, int], tuple[tuple[int, bytes], ...]]:
    """``((st_dev, st_ino), ((start, bytes), ...))`` of the file ``filename`` names, read
    from one descriptor (bytes short at the end of the file, or where the offset is past
    what the file system allows); OSError if it cannot be opened. O_NONBLOCK: a FIFO put in
    its place does not block the open (and is not read: its identity is not the file's)."""
    flags = (os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
             | getattr(os, "O_CLOEXEC", 0))
    try:
        fd = os.open(filename, flags)
    except ValueError as exc:  # a NUL byte in the name
        raise OSError(f"cannot open {filename!r}: {exc}") from None
    try:
        st = os.fstat(fd)
        identity = (st.st_dev, st.st_ino)
        if not stat.S_ISREG(st.st_mode):
            return identity, tuple((start, b"") for start, _ in spans)
        out = []
        for start, stop in spans:
            try:
                data = _pread(fd, stop - start, start)
            except OSError:  # EINVAL: an offset past the file system's largest
                data = b""
            out.append((start, data))
        return identity, tuple(out)
    finally:
        os.close(fd)


def _pread(fd: int, n: int, pos: int) -> bytes:
    """Up to ``n`` bytes at ``pos`` (fewer only at the end of the file)."""
    chunks = []
    while n > 0:
        if hasattr(os, "pread"):
            data = os.pread(fd, n, pos)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos, os.SEEK_SET)
            data = os.read(fd, n)
        if not data:
            break
        chunks.append(data)
        n -= len(data)
        pos += len(data)
    return b"".join(chunks)


def remap_error(exc: BaseException, what: str, filename: str, offset: int,
                length: int) -> BaseException:
    """The error to raise when mapping a referenced range of ``filename`` again failed with
    ``exc``: OS errors that name the file as they are; a file now too short for the range
    said so (an unpickle never grows a file, whatever the mode); anything else with
    ``what`` was being mapped."""
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc
    try:
        size = os.stat(filename).st_size
    except OSError:
        size = None
    if size is not None and size < offset + length:
        return ValueError(f"{filename!r} is {size} bytes now, too short for {what} (bytes "
                          f"{offset} to {offset + length}): it was truncated since; a "
                          f"reference never grows the file it refers to")
    return type(exc)(f"cannot map {what} of {filename!r} (bytes {offset} to "
                     f"{offset + length}) again: {exc}")
