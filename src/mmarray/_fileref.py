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
from typing import Any, Optional

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
