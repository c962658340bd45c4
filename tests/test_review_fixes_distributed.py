"""distributed moves an mmarray.memmap by reference whatever the import order: with
distributed imported after mmarray (the usual order) the serializer was not registered, so
distributed's ndarray serializer copied the view and worker writes were lost
(/tmp/a6/t_cluster2.py). Each case runs in a subprocess with a timeout."""
import pytest

from helpers import assert_clean_exit, run_python

pytest.importorskip("distributed")

ROUND_TRIP = """
import sys
{imports}
import numpy as np
from distributed.protocol import serialize, deserialize
path = {path!r}
mm = mmarray.memmap(path, mode="w+", dtype="i4", shape=(16,))
header, frames = serialize(mm[::2])
back = deserialize(header, frames)
back[0] = 42
back.flush()
print(type(back).__name__, back.filename == path, int(np.fromfile(path, "i4")[0]))
"""


@pytest.mark.parametrize("imports", ["import mmarray\nimport distributed",
                                     "import distributed\nimport mmarray",
                                     "import mmarray\nimport distributed.protocol"])
def test_serialize_round_trip_keeps_the_file_in_either_import_order(tmp_path, imports):
    proc = run_python(ROUND_TRIP.format(imports=imports, path=str(tmp_path / "cl.bin")),
                      timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["memmap", "True", "42"]


def test_mmarray_alone_imports_no_distributed_and_leaves_no_finder_after_it_is_imported():
    proc = run_python("""
        import sys
        import mmarray
        from mmarray import _posthook
        print("distributed" in sys.modules,
              any(isinstance(f, _posthook._Finder) for f in sys.meta_path))
        import distributed
        print(any(isinstance(f, _posthook._Finder) for f in sys.meta_path))
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["False", "True", "False"]


def test_a_worker_write_into_a_scattered_view_reaches_the_file(tmp_path):
    proc = run_python(f"""
        import os, numpy as np
        import mmarray                      # the usual order: mmarray first
        from dask.distributed import Client, LocalCluster

        def write(a):
            a[0] = 42
            if hasattr(a, "flush"):
                a.flush()
            return type(a).__name__

        if __name__ == "__main__":
            p = {str(tmp_path / "cl.bin")!r}
            mm = mmarray.memmap(p, mode="w+", dtype="i4", shape=(16,))
            mm.flush()
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                              host="127.0.0.1", dashboard_address="127.0.0.1:0") as cl, \\
                    Client(cl, timeout=60) as c:
                [f] = c.scatter([mm[::2]])
                print(c.submit(write, f, pure=False).result(timeout=60))
            print(int(np.fromfile(p, "i4")[0]))
    """, timeout=180)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["memmap", "42"]


# dask keyed every numpy.memmap by a hash of its contents; an mmarray.memmap travels by
# reference, so two regions holding the same values (the zeros of a fresh 'w+' file) got one
# key, one task ran for both, and the other region's writes were lost (helper-59).
TOKENS = """
{imports}
import os
import numpy as np
from dask.base import tokenize
d = {d!r}
out = mmarray.memmap(os.path.join(d, "o.f8"), mode="w+", dtype="f8", shape=(100, 10))
other = mmarray.memmap(os.path.join(d, "p.f8"), mode="w+", dtype="f8", shape=(100, 10))
copy = mmarray.memmap(os.path.join(d, "o.f8"), mode="c", dtype="f8", shape=(100, 10))
print(tokenize(out[:50]) != tokenize(out[50:]),     # same values, other bytes of the file
      tokenize(out[:50]) == tokenize(out[:50]),     # the same region: the same key
      tokenize(out) != tokenize(other),             # the same values in another file
      tokenize(out[::2]) != tokenize(out[1::2]),
      tokenize(copy[:50]) == tokenize(copy[50:]))   # mode 'c' pickles a copy: by contents
"""


@pytest.mark.parametrize("imports", ["import mmarray\nimport dask.base",
                                     "import dask.base\nimport mmarray",
                                     "import mmarray\nimport dask.array"])
def test_dask_tokens_of_memmap_regions_name_their_bytes_not_their_values(tmp_path, imports):
    proc = run_python(TOKENS.format(imports=imports, d=str(tmp_path)), timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["True"] * 5


def test_tasks_submitted_on_zero_regions_of_a_memmap_each_write_their_rows(tmp_path):
    proc = run_python(f"""
        import numpy as np
        import mmarray
        from dask.distributed import Client, LocalCluster

        def fill(part, value):
            part[:] = value
            part.flush()
            return value

        if __name__ == "__main__":
            out = mmarray.memmap({str(tmp_path / "out.f8")!r}, dtype="f8", mode="w+",
                                 shape=(1000, 10))
            with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                              host="127.0.0.1", dashboard_address="127.0.0.1:0") as cl, \\
                    Client(cl, timeout=60) as c:
                futures = [c.submit(fill, out[i:i + 100], 1.0) for i in range(0, 1000, 100)]
                c.gather(futures)
                print(len({{f.key for f in futures}}), int((out[:, 0] == 1).sum()))
    """, timeout=180)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["10", "1000"]


def test_dask_tokens_of_writable_memmaps_with_no_reference_name_their_memory(tmp_path):
    """A memmap of a file object without a name, or of a file deleted since, has no
    reference: it fell back to a hash of its contents, and equal-valued regions shared a key
    (helper-60)."""
    proc = run_python(f"""
        import os, tempfile
        import mmarray
        from dask.base import tokenize
        unnamed = mmarray.memmap(tempfile.TemporaryFile(), mode="w+", dtype="f8", shape=(100,))
        p = os.path.join({str(tmp_path)!r}, "gone.f8")
        deleted = mmarray.memmap(p, mode="w+", dtype="f8", shape=(100,))
        os.unlink(p)
        for out in (unnamed, deleted):
            print(tokenize(out[:50]) != tokenize(out[50:]),
                  tokenize(out[:50]) == tokenize(out[:50]))
    """, timeout=120)
    assert_clean_exit(proc)
    assert proc.stdout.split() == ["True"] * 4
