"""Access policy on top of the engine's region operations: prefetch, chunked scans, eviction.

The engine's ``_advise_bytes`` releases the GIL and holds an export while it runs, so a
background thread that populates pages runs truly in parallel with the caller's work, and a
concurrent ``close()`` defers the unmap until the thread is done with the region.
"""
from __future__ import annotations

import os
import stat
import threading
from typing import TYPE_CHECKING, Any, SupportsIndex

from mmarray import _guard
from mmarray._engine import _Pin, _PopulateAhead
from mmarray._ranges import ADVICE_CODES, RowIndex, as_int

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

    from mmarray._mapping import Mapping

#: The largest page-cache folio to expect: PMD size on x86-64 and arm64 with 4 KiB pages (the
#: kernel's MAX_PAGECACHE_ORDER); chunks(drop_behind="cache") overlaps its drops by this much.
_FOLIO_SPAN = 2 << 20
_PREFETCH_STEP = 8 << 20  # bytes per step of a prefetch: the stop flag is checked between steps


class Prefetch:
    """A background population of part of a mapping, started by :meth:`Mapping.prefetch`.

    Attributes
    ----------
    done : bool
        True once the pages were faulted in (or the attempt failed).
    """

    def __init__(self, mapping: Mapping, first: int, length: int) -> None:
        self._error: BaseException | None = None
        # The populate-ahead loop with a window of the whole range: faults it all in,
        # GIL-free. It refuses resizes while it runs; one by another thread before it starts
        # makes it raise BufferError (in wait()).
        loop = _PopulateAhead(mapping, first, first + length, _PREFETCH_STEP, length or 1)
        self._loop = loop
        self._thread = threading.Thread(target=self._run, args=(loop,),
                                        name="mmarray-prefetch", daemon=True)
        self._thread.start()

    def _run(self, loop: _PopulateAhead) -> None:
        with _guard.loop_thread():
            try:
                loop.run()
            except BaseException as exc:  # re-raised in wait()
                self._error = exc

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def cancel(self) -> None:
        """Stop the prefetch at its next step (at most 8 MiB on); :meth:`wait` then returns
        at once. Closing the mapping stops it too. What was faulted in stays."""
        self._loop.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the prefetch to finish; re-raise its error, if any. Returns ``done``."""
        self._thread.join(timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.done


def _axis(mapping: Mapping) -> int:
    shape = mapping.shape
    if not shape:
        raise ValueError("cannot iterate over chunks of a 0-d mapping")
    return 0 if mapping.order == "C" else len(shape) - 1


def chunks(mapping: Mapping, rows: SupportsIndex, prefetch: bool = True,
           ahead: SupportsIndex = 2,
           drop_behind: bool | str = False) -> Iterator[np.ndarray[Any, np.dtype[Any]]]:
    """Iterate over the mapping in views of ``rows`` rows, populating ahead in the background.

    See :meth:`Mapping.chunks`. The background thread runs one C loop without the GIL
    (``mm_populate_ahead``): it faults chunk after chunk in, staying at most ``ahead`` chunks
    beyond the one the caller is working on, so the caller and the populator never wait for
    each other's GIL.
    """
    rows = as_int(rows, "rows", "a positive number of rows per chunk")
    if rows <= 0:
        raise ValueError(f"rows must be a positive number of rows per chunk, got {rows}")
    ahead = as_int(ahead, "ahead", "a number of chunks >= 1")
    if ahead < 1:
        raise ValueError(f"ahead must be >= 1 chunk, got {ahead}")
    # Pinned first: the array, the shape, the byte ranges and the populator below are all
    # of one view (a resize by another thread in between would give chunks of one view and
    # a populator, or releases, of another). The pin is held for as long as the loop needs
    # the view: a drop_behind loop's releases and a prefetching loop's populator go to it.
    axis = _axis(mapping)
    behind = _Dropper(mapping, drop_behind == "cache") if drop_behind else None
    pin = behind.pin if behind is not None else _Pin(mapping)
    try:
        array = mapping.array
        n = mapping.shape[axis]
        first, total = mapping._byte_range(0, n)
        step = mapping._byte_range(0, rows)[1]
    except BaseException:
        pin.release()
        raise
    lead = (slice(None),) * axis
    if step == 0 and behind is not None:  # zero-width rows: no bytes to release
        behind = None
    if not prefetch or n <= rows or step == 0:  # step 0: zero-width rows, no bytes to fault
        if behind is None:
            pin.release()  # the chunks are views of `array`, which keeps its own view
        try:
            for i in range(0, n, rows):
                yield array[lead + (slice(i, i + rows),)]
                if behind is not None:
                    behind.drop(i, min(i + rows, n))
        finally:
            pin.release()
        return

    # ahead * step may pass 64 bits (ahead=2**64): more than the whole range is the whole range
    try:
        populator = _PopulateAhead(mapping, first, first + total, step,
                                   min(ahead * step, total))
    except BaseException:
        pin.release()
        raise
    failure: list[BaseException] = []

    def populate() -> None:
        with _guard.loop_thread():
            try:
                populator.run()
            except BaseException as exc:
                if not mapping.closed:  # closed meanwhile: the views stay valid, stop quietly
                    failure.append(exc)  # surfaced by the consumer below

    row_bytes = step // rows
    passed = dropped = 0  # rows the consumer is done with; rows released so far

    def release(limit: int) -> None:
        # Release the passed rows below `limit`, a byte of the mapping below which the
        # populator faults nothing again (a fault of it still in flight would map released
        # pages back). Its fault may map the whole folio holding its position, so the limit is
        # taken down to a folio boundary in the file.
        nonlocal dropped
        if behind is None:  # no drop_behind: nothing to release
            return
        # Nor into the folio holding the start of the consumer's next chunk: its own fault
        # there maps that whole folio (or fault-around window) back, rows before it included.
        limit = min(limit, first + passed * row_bytes)
        limit = (mapping.offset + limit) // _FOLIO_SPAN * _FOLIO_SPAN - mapping.offset
        upto = min(passed, max(0, limit - first) // row_bytes)
        if upto > dropped:
            behind.drop(dropped, upto)
            dropped = upto

    worker = threading.Thread(target=populate, name="mmarray-chunks", daemon=True)
    try:
        worker.start()
    except BaseException:  # no thread (RuntimeError): not left pinned while the error lives
        pin.release()
        raise
    try:
        for i in range(0, n, rows):
            if failure:
                raise failure[0]
            populator.advance(first + min(i + rows, n) * row_bytes)
            yield array[lead + (slice(i, i + rows),)]
            if behind is not None:
                passed = min(i + rows, n)
                release(populator.progress)
    finally:
        populator.cancel()
        worker.join()
        try:
            if behind is not None and passed > dropped:  # nothing in flight, nothing read next
                behind.drop(dropped, passed)
        finally:
            pin.release()


class _Dropper:
    """Releases the pages of rows a ``chunks(drop_behind=...)`` consumer has passed."""

    def __init__(self, mapping: Mapping, cache: bool) -> None:
        self.mapping = mapping
        # The releases go to the view the consumer's chunks are on: no resize (which would
        # move the view and leave the old one's pages resident) until the loop ends.
        self.pin = _Pin(mapping)
        self.writable = mapping.mode in ("r+", "w+")
        self.cache = cache
        self.cache_from = -1  # byte of the mapping where the next page-cache drop starts

    def drop(self, start: int, stop: int) -> None:
        """Release rows ``[start, stop)``; nothing when the mapping is closed meanwhile (its
        pages go with it), also when another thread closes it during this call."""
        try:
            self._drop(start, stop)
        except ValueError as exc:
            # Another thread's close() between the calls below (msync releases the GIL):
            # only that is quiet; any other ValueError is a real error.
            if not (self.mapping.closed and str(exc) == "mapping is closed"):
                raise

    def _drop(self, start: int, stop: int) -> None:
        mapping = self.mapping
        if mapping.closed:
            return  # closed meanwhile: its pages go with it
        first, length = mapping._byte_range(start, stop)
        if not length:
            return
        if self.writable:
            # drop_behind=True: write-back scheduled (MS_ASYNC). "cache": written (MS_SYNC),
            # because posix_fadvise(2) POSIX_FADV_DONTNEED leaves dirty pages in the cache.
            # Checked as flush() checks: writes lost to a fault or a truncation raise.
            mapping._flush_checked(first, length, self.cache, "chunks(drop_behind=...)")
        # MADV_DONTNEED on a shared file mapping drops only this process's page-table
        # entries (dirty pages stay in the page cache): the rows read back from the file.
        mapping._advise_bytes(first, length, ADVICE_CODES["dontneed"])
        if self.cache:
            # POSIX_FADV_DONTNEED skips a large folio (ext4 caches up to 2 MiB per folio) that
            # the range covers only in part, so each call starts at the folio boundary below
            # the end of the previous one: the folio that straddled it is covered whole now.
            start = first if self.cache_from < 0 else min(first, self.cache_from)
            _drop_from_page_cache(mapping, start, first + length - start)
            end = mapping.offset + first + length  # folios are aligned in the file
            self.cache_from = max(0, end // _FOLIO_SPAN * _FOLIO_SPAN - mapping.offset)


def _drop_from_page_cache(mapping: Mapping, first: int, length: int) -> None:
    """posix_fadvise(2) POSIX_FADV_DONTNEED on bytes ``[first, first + length)`` of the
    mapping: the kernel drops those clean cached pages of the file. The mapping holds no
    descriptor, so the file is reopened by name; a file object's mapping has no name, and
    Windows has no posix_fadvise: nothing is done there."""
    identity = mapping._identity()
    if mapping.filename is None or identity is None or not hasattr(os, "posix_fadvise"):
        return
    try:
        # O_NONBLOCK: a FIFO put at the name since must not block the open ("fifo(7)"); it
        # changes nothing for a regular file's page cache.
        fd = os.open(mapping.filename, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # renamed, deleted, locked away or made unopenable since: nothing to do
        return
    try:
        st = os.fstat(fd)
        # Still the mapped file: its numbers, and a regular file (a FIFO made at the name
        # once the file is gone may reuse its inode number).
        if (st.st_dev, st.st_ino) == tuple(identity[:2]) and stat.S_ISREG(st.st_mode):
            os.posix_fadvise(fd, mapping.offset + first, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def evict(mapping: Mapping, start: RowIndex, stop: RowIndex) -> None:
    """Drop rows ``[start, stop)`` from this process and, where possible, the page cache."""
    if mapping.mode == "c":
        raise ValueError("evict() on a copy-on-write mapping (mode 'c') would discard its "
                         "private changes; expected mode 'r', 'r+' or 'w+'")
    if mapping.closed:
        raise ValueError("mapping is closed")
    first, length = mapping._byte_range(start, stop)
    if length == 0:
        return
    if mapping.mode != "r":  # dirty pages cannot be dropped from the cache; checked as flush()
        mapping._flush_checked(first, length, True, "evict()")
    mapping._advise_bytes(first, length, ADVICE_CODES["dontneed"])
    _drop_from_page_cache(mapping, first, length)
