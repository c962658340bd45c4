"""What a pickled reference carries to find its file again, and the check its receiver makes.

A :class:`~mmarray.Mapping`, an :class:`~mmarray.ArrayRef` and an ``mmarray.memmap`` pickle
as a file name, a byte range and the file's identity: its device and inode numbers
(``os.stat``'s ``st_dev`` and ``st_ino``; on Windows the volume serial number and file index)
and the host they were read on. The receiver maps the range by name and then compares the
identity of the file it actually mapped -- read from the open descriptor, so nothing can
swap the file between the check and the map -- with the pickled one. Device and inode
numbers mean something only on the host (and boot) that read them, so another host checks
only that the file is long enough, which the map itself does: a file shorter than the range
is refused, never grown.
"""
from __future__ import annotations

import os
from typing import Any, Optional

__all__ = ["FileIdentity", "host_id", "verify"]

#: (st_dev, st_ino) of a mapped file, or None for a region that maps no byte.
FileIdentity = Optional["tuple[int, int]"]

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
    if tuple(found) != tuple(identity):
        mapping.close()
        raise ValueError(
            f"{filename!r} is no longer the file that was pickled: it was device {identity[0]} "
            f"inode {identity[1]}, now it is device {found[0]} inode {found[1]} (replaced or "
            f"renamed over since); refusing to map a different file")
