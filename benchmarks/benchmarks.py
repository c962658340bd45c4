"""asv benchmarks built on the cases of ``python -m mmarray bench`` (``mmarray.bench.cases``).

The harness runs the contenders interleaved against numpy.memmap and each case's limit and
checks the targets; asv tracks the same statements across commits. Each class makes its
files with the harness's ``Context`` in a temporary directory.
"""
import shutil
import tempfile
import textwrap

import numpy as np

from mmarray.bench import cases


def _function(stmt, namespace):
    """A function running ``stmt`` (a harness statement) with ``namespace`` as its globals."""
    scope = dict(namespace)
    exec("def run():\n" + textwrap.indent(stmt, "    "), scope)
    return scope["run"]


class _Case:
    """Makes a harness context (and its files) in a temporary directory per setup."""

    def setup(self, *params):
        self.tmp = tempfile.mkdtemp(prefix="mmarray-asv-")
        self.ctx = cases.Context(self.tmp, mode="quick")

    def teardown(self, *params):
        shutil.rmtree(self.tmp, ignore_errors=True)


class OpenClose(_Case):
    """Case open_close_4k: open + array + close of a 4 KiB file."""

    params = list(cases.OPEN_CLOSE)
    param_names = ["contender"]

    def setup(self, contender):
        super().setup()
        ns = cases.open_close_namespace(self.ctx)
        self.run = _function(cases.OPEN_CLOSE[contender], ns)

    def time_open_close(self, contender):
        self.run()


class NpyOpenClose(_Case):
    """Case npy_open_close: a small .npy opened and closed."""

    params = ["np.load(mmap_mode='r')", "mmarray.load"]
    param_names = ["contender"]

    def setup(self, contender):
        super().setup()
        path = self.ctx.file("small.npy")
        if contender == "mmarray.load":
            stmt, ns, _ = cases.load_npy_stmt(self.ctx, path)
        else:
            stmt, ns = "a = np.load(path, mmap_mode='r'); del a", {"np": np, "path": path}
        self.run = _function(stmt, ns)

    def time_open_close(self, contender):
        self.run()


class Ops(_Case):
    """Case ops: a[5], a[10:20], a[:100].sum(), a + 1 on a mapped 4 KiB float64 file."""

    params = ([op for _, op in cases.OPS], ["numpy.memmap", "mmarray", "mmarray.memmap"])
    param_names = ["op", "contender"]

    def setup(self, op, contender):
        super().setup()
        path = self.ctx.file("ops.f64")
        if contender == "numpy.memmap":
            a = np.memmap(path, dtype=np.float64, mode="r")
        elif contender == "mmarray":
            self.mapping = self.ctx.mm.open(path, dtype=np.float64, mode="r")
            a = self.mapping.array
        else:
            a = self.ctx.mm.memmap(path, dtype=np.float64, mode="r")
        self.run = _function(op, {"a": a})

    def time_op(self, op, contender):
        self.run()

    def teardown(self, op, contender):
        self.run = None  # the last reference to a numpy.memmap: unmaps it
        if getattr(self, "mapping", None) is not None:
            self.mapping.close()
        super().teardown()
