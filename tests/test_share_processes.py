"""Sharing mapped files between processes by reference (#10): multiprocessing pools (fork and
spawn), joblib's loky, dask (threads, processes, a distributed cluster), and what an unpickle
does when the file changed under the reference.

Each test is named for the case it pins. Worker functions live in tests/_share_workers.py so
that spawned workers import them by name. Everything that could hang has a timeout; anything
that could crash a process (a mapping of a truncated file) runs in a child whose exit code is
checked.
"""
import faulthandler
import json
import multiprocessing
import os
import pickle
import sys
import time
from multiprocessing.reduction import ForkingPickler

import _share_workers as workers
import numpy as np
import pytest

import mmarray
from helpers import assert_clean_exit, mapped_bytes, run_python

TIMEOUT = 60          # seconds for any one pool, cluster or child operation
KIB = 1024
needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(),
                                reason="needs the fork start method")


@pytest.fixture(autouse=True)
def _no_test_hangs_forever():
    """A hang (a pool waiting for a task that died, a cluster that never answers) dumps every
    thread's stack and ends the run instead of blocking it."""
    faulthandler.dump_traceback_later(4 * TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _pickled_size(obj):
    """Bytes of ``obj`` pickled, by pickle.dumps and by the ForkingPickler that Pool uses."""
    return max(len(pickle.dumps(obj)), len(bytes(ForkingPickler.dumps(obj))))


def _extent(array):
    """Bytes from the lowest to one past the highest byte that a non-empty ``array`` reaches."""
    lo = hi = 0
    for n, stride in zip(array.shape, array.strides):
        if stride < 0:
            lo += (n - 1) * stride
        else:
            hi += (n - 1) * stride
    return hi + array.itemsize - lo


# -- 1. the parallel writer: preallocate, hand out slices by reference, fill, read back -------

N_ROWS, WIDTH = 1000, 333      # 2.7 MB of float64; the four tasks meet inside pages
WRITER_TYPES = {"mapping": "Mapping", "ref": "ArrayRef", "memmap": "memmap"}


def _writer_tasks(kind, path, m):
    bounds = [(i * N_ROWS // 4, (i + 1) * N_ROWS // 4) for i in range(4)]
    if kind == "mapping":      # the whole Mapping and a row range
        return [(kind, m, lo, hi, WIDTH) for lo, hi in bounds]
    if kind == "ref":          # a reference to just the rows
        return [(kind, mmarray.ref(m.array[lo:hi]), lo, hi, WIDTH) for lo, hi in bounds]
    mm = mmarray.memmap(path, dtype="f8", mode="r+", shape=(N_ROWS, WIDTH))
    return [(kind, mm[lo:hi], lo, hi, WIDTH) for lo, hi in bounds]


@pytest.mark.parametrize("kind", list(WRITER_TYPES))
@pytest.mark.parametrize("ctx", [pytest.param("fork", marks=needs_fork), "spawn"])
def test_pool_workers_fill_a_preallocated_file_through_references_to_their_rows(
        tmp_path, ctx, kind):
    path = tmp_path / "out.f8"
    m = mmarray.open(path, dtype="f8", mode="w+", shape=(N_ROWS, WIDTH))
    tasks = _writer_tasks(kind, str(path), m)
    sizes = [_pickled_size(task) for task in tasks]
    assert max(sizes) < KIB, sizes          # 666 kB of rows per task, none of it sent

    with multiprocessing.get_context(ctx).Pool(2) as pool:
        reports = pool.map_async(workers.fill_rows, tasks, chunksize=1).get(TIMEOUT)

    expected = workers.expected_rows(0, N_ROWS, WIDTH)
    assert np.array_equal(m.array, expected)            # through the parent's own mapping
    on_disk = np.fromfile(path, dtype="f8")             # and through plain file reads
    assert on_disk.size == N_ROWS * WIDTH and np.array_equal(on_disk.reshape(expected.shape),
                                                             expected)
    quarter = N_ROWS // 4 * WIDTH * 8
    for report in reports:
        assert report["type"] == WRITER_TYPES[kind]
        assert report["mode"] == "r+"                   # the parent's 'w+' arrives as 'r+'
        assert report["pid"] != os.getpid()
        assert report["mapped"] == (4 * quarter if kind == "mapping" else quarter)
        if kind == "memmap":
            assert (report["filename"], report["offset"]) == (os.path.realpath(path), 0)
    m.close()


@pytest.mark.parametrize("ctx", [pytest.param("fork", marks=needs_fork), "spawn"])
def test_pool_workers_return_the_files_they_wrote_by_reference(tmp_path, ctx):
    tasks = [(str(tmp_path / f"part{i}.f8"), 300, 200, 1000.0 * i) for i in range(3)]
    with multiprocessing.get_context(ctx).Pool(2) as pool:
        results = pool.map_async(workers.make_output, tasks, chunksize=1).get(TIMEOUT)
    for (path, rows, width, value), (m, every_other, tail) in zip(tasks, results):
        expected = value + np.arange(rows, dtype="f8")[:, None] + np.zeros(width)
        assert type(m) is mmarray.Mapping and m.mode == "r+"     # the worker's 'w+'
        assert (m.filename, m.shape) == (path, (rows, width))
        assert np.array_equal(m.array, expected)
        assert np.array_equal(np.asarray(every_other), expected[::2])
        assert type(tail) is mmarray.memmap and tail.mode == "r"
        assert np.array_equal(tail, expected[rows // 2:])
        assert os.path.getsize(path) == rows * width * 8
        m[0, 0] = -1                                            # the worker's file itself
        assert np.fromfile(path, dtype="f8")[0] == -1
        m.close()


# -- 2. read-only sharing -----------------------------------------------------------------------

HEADER = 64


def _read_only_views(tmp_path):
    """(name, task for workers.total, the data the task must see) over one file read in mode
    'r' through every kind of reference, with a header before the data (offset != 0)."""
    data = np.random.default_rng(10).integers(-1000, 1000, (512, 300)).astype("f8")
    path = tmp_path / "in.f8"
    with open(path, "wb") as f:
        f.write(b"\xff" * HEADER)
        data.tofile(f)
    np.savez(tmp_path / "in.npz", first=np.arange(7), data=data)
    m = mmarray.open(path, dtype="f8", mode="r", offset=HEADER, shape=data.shape)
    fortran = mmarray.open(path, dtype="f8", mode="r", offset=HEADER, shape=data.shape[::-1],
                           order="F")   # the same bytes, seen as data.T
    mm = mmarray.memmap(path, dtype="f8", mode="r", offset=HEADER, shape=data.shape)
    member = mmarray.load(tmp_path / "in.npz", mode="r")["data"]
    return [
        ("Mapping and rows", (m, slice(100, 228)), data[100:228]),
        ("Fortran Mapping and columns", (fortran, (slice(None), slice(3, 9))), data.T[:, 3:9]),
        ("npz member Mapping", (member, slice(None, None, 3)), data[::3]),
        ("ArrayRef of rows", (mmarray.ref(m.array[:128]), None), data[:128]),
        ("ArrayRef strided, reversed", (mmarray.ref(m.array[5:400:7, ::-3]), None),
         data[5:400:7, ::-3]),
        ("ArrayRef transposed", (mmarray.ref(m.array[200:260].T), None), data[200:260].T),
        ("memmap rows", (mm[300:], None), data[300:]),
        ("memmap strided, transposed", (mm[::5, 10:290:4].T, None), data[::5, 10:290:4].T),
    ]


@pytest.mark.parametrize("ctx", [pytest.param("fork", marks=needs_fork), "spawn"])
def test_pool_workers_sum_read_only_views_they_received_by_reference(tmp_path, ctx):
    views = _read_only_views(tmp_path)
    tasks = [task for _, task, _ in views]
    for name, task, _ in views:
        assert _pickled_size(task) < KIB, name

    with multiprocessing.get_context(ctx).Pool(2) as pool:
        reports = pool.map_async(workers.total, tasks, chunksize=1).get(TIMEOUT)

    for (name, (target, key), want), got in zip(views, reports):
        assert got["sum"] == want.sum(), name    # integers in float64: exact
        assert got["shape"] == want.shape, name
        assert got["writeable"] is False, name   # mode 'r' stays read-only over there
        assert got["pid"] != os.getpid(), name
        if key is None:                          # a view maps just the bytes it spans
            assert got["mapped"] == _extent(np.asarray(target)), name
        if got["type"] == "memmap":              # and keeps the attributes of the original
            assert (got["filename"], got["offset"], got["mode"]) == (
                target.filename, HEADER, "r"), name


def test_a_64_gib_sparse_file_pickles_under_1_kib_and_a_child_reads_its_far_end(tmp_path):
    path = tmp_path / "huge.f8"
    size = 64 << 30
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size - 16)
        f.write(np.array([42.5, -1.25]).tobytes())
    m = mmarray.open(path, dtype="f8", mode="r", shape=(size // 8 // 4096, 4096))
    mm = mmarray.memmap(path, dtype="f8", mode="r", shape=(size // 8 // 4096, 4096))
    payloads = {"Mapping": pickle.dumps(m), "ArrayRef": pickle.dumps(mmarray.ref(m.array[-2:])),
                "memmap": pickle.dumps(mm[-3:, ::-1])}
    assert all(len(p) < KIB for p in payloads.values()), {k: len(p) for k, p in payloads.items()}
    payload_file = tmp_path / "payloads.pickle"
    payload_file.write_bytes(pickle.dumps(payloads))
    proc = run_python(f"""
        import json, pickle, numpy as np, mmarray
        with open({str(payload_file)!r}, "rb") as f:
            p = {{k: pickle.loads(v) for k, v in pickle.load(f).items()}}
        print(json.dumps({{"Mapping": p["Mapping"][-1, -2:].tolist(),
                          "ArrayRef": np.asarray(p["ArrayRef"])[-1, -2:].tolist(),
                          "memmap": p["memmap"][-1, :2].tolist(),
                          "memmap mapped": mmarray.mapping_of(p["memmap"]).nbytes}}))
    """, timeout=TIMEOUT)
    assert_clean_exit(proc)
    assert json.loads(proc.stdout) == {"Mapping": [42.5, -1.25], "ArrayRef": [42.5, -1.25],
                                       "memmap": [-1.25, 42.5],
                                       "memmap mapped": 3 * 4096 * 8}   # not 64 GiB
    m.close()
    mm.close()


# -- 3. joblib's loky backend ------------------------------------------------------------------

@pytest.fixture(scope="module")
def loky():
    """joblib, and loky's reusable workers stopped at the end of the module."""
    joblib = pytest.importorskip("joblib")
    yield joblib
    from joblib.externals.loky import reusable_executor
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        executor.shutdown(wait=True, kill_workers=True)


@pytest.mark.parametrize("kind", ["memmap", "ArrayRef"])
def test_joblib_loky_hands_workers_the_mapped_rows_by_reference(tmp_path, loky, kind):
    """Each row is 2 MiB, over joblib's 1 MB max_nbytes: had joblib treated it as an array it
    would have dumped a copy into its own temporary folder, and the writes would be lost."""
    path = tmp_path / "rows.f8"
    width = 1 << 18
    mm = mmarray.memmap(path, dtype="f8", mode="w+", shape=(4, width))
    parts = [mm[i] if kind == "memmap" else mmarray.ref(mm[i]) for i in range(4)]
    sizes = [len(pickle.dumps(part)) for part in parts]
    assert max(sizes) < KIB, sizes

    reports = loky.Parallel(n_jobs=2, backend="loky", timeout=TIMEOUT)(
        loky.delayed(workers.write_part_and_report)(part, i + 1)
        for i, part in enumerate(parts))

    expected = np.repeat(np.arange(1.0, 5.0)[:, None], width, axis=1)
    assert np.array_equal(np.fromfile(path, dtype="f8").reshape(4, width), expected)
    assert np.array_equal(mm, expected)
    for report in reports:
        assert report["type"] == kind
        assert report["filename"] == (mm.filename if kind == "memmap" else str(path))
        assert report["pid"] != os.getpid()
        if kind == "memmap":
            assert report["mode"] == "r+" and report["mapped"] == width * 8   # just its row
    mm.close()


# -- 4a. dask on one machine: threads and processes --------------------------------------------

@pytest.fixture(scope="module")
def da():
    return pytest.importorskip("dask.array")


def _integers(shape, seed=4):
    """float64 data whose sums are exact (small integers)."""
    return np.random.default_rng(seed).integers(-500, 500, shape).astype("f8")


def _integers_file(path, shape, seed=4):
    data = _integers(shape, seed)
    data.tofile(path)
    return data


def test_dask_from_array_over_a_mapping_sums_and_means_on_threads(tmp_path, da):
    data = _integers_file(tmp_path / "x.f8", (2000, 300))
    with mmarray.open(tmp_path / "x.f8", dtype="f8", mode="r", shape=data.shape) as m:
        x = da.from_array(m, chunks=(250, 100))
        assert x.numblocks == (8, 3)
        assert x.sum().compute(scheduler="threads") == data.sum()
        assert x.mean(axis=0).compute(scheduler="threads") == pytest.approx(data.mean(axis=0))
        assert np.array_equal(x[::7, 5].compute(scheduler="threads"), data[::7, 5])


def test_dask_graph_over_a_mapping_of_an_8_gib_sparse_file_pickles_in_kilobytes(tmp_path, da):
    cloudpickle = pytest.importorskip("cloudpickle")
    path = tmp_path / "sparse.f8"
    with open(path, "wb") as f:
        f.truncate(8 << 30)
    with mmarray.open(path, dtype="f8", mode="r", shape=(1 << 20, 1024)) as m:
        x = da.from_array(m, chunks=(1 << 17, 1024))            # 8 chunks of 1 GiB
        graph = dict(x.sum().__dask_graph__())
        assert len(pickle.dumps(graph)) < 64 * KIB
        assert len(cloudpickle.dumps(graph)) < 64 * KIB


@pytest.mark.parametrize("mode", ["r+", "w+"])
def test_dask_store_on_threads_writes_into_the_mapping(tmp_path, da, mode):
    path = tmp_path / "target.f8"
    if mode == "r+":
        with open(path, "wb") as f:
            f.truncate(1000 * 100 * 8)
    target = mmarray.open(path, dtype="f8", mode=mode, shape=(1000, 100))
    x = da.arange(100_000, dtype="f8", chunks=10_000).reshape(1000, 100).rechunk((250, 50))
    da.store(x, target, scheduler="threads")
    expected = np.arange(100_000, dtype="f8").reshape(1000, 100)
    assert np.array_equal(target.array, expected)
    assert np.array_equal(np.fromfile(path, dtype="f8").reshape(1000, 100), expected)
    target.close()


def test_dask_processes_scheduler_stores_into_an_r_plus_mapping_and_reads_it_back(tmp_path, da):
    path = tmp_path / "target.f8"
    with open(path, "wb") as f:
        f.truncate(400 * 250 * 8)
    target = mmarray.open(path, dtype="f8", mode="r+", shape=(400, 250))
    x = da.arange(100_000, dtype="f8", chunks=25_000).reshape(400, 250)
    da.store(x, target, scheduler="processes", num_workers=2)
    expected = np.arange(100_000, dtype="f8").reshape(400, 250)
    assert np.array_equal(np.fromfile(path, dtype="f8").reshape(400, 250), expected)
    back = da.from_array(target, chunks=(100, 250))
    assert back.sum().compute(scheduler="processes", num_workers=2) == expected.sum()
    target.close()


# -- 4b. dask.distributed: one local cluster of two worker processes for the module ------------

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # Loopback only. dashboard_address=None still serves HTTP on 127.0.0.1:8787 and warns when
    # another run holds that port: any free loopback port instead.
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    try:
        with distributed.Client(cluster, timeout=TIMEOUT) as c:
            yield c
    finally:
        cluster.close(timeout=TIMEOUT)


def _compute(client, *collections):
    """Compute on the cluster, waiting at most TIMEOUT for each result."""
    return [future.result(timeout=TIMEOUT) for future in client.compute(list(collections))]


def test_distributed_from_array_over_a_512_mib_sparse_mapping_sends_a_small_graph(
        tmp_path, da, client):
    cloudpickle = pytest.importorskip("cloudpickle")
    path = tmp_path / "sparse.f8"
    size = 512 << 20
    with open(path, "wb") as f:
        f.truncate(size)
    known = {0: 1.0, 12_345: 2.5, size // 16 + 3: 11.0, size // 8 - 1: -7.0}
    with mmarray.open(path, dtype="f8", mode="r+", shape=(size // 8,)) as w:
        for index, value in known.items():
            w[index] = value
    m = mmarray.open(path, dtype="f8", mode="r", shape=(size // 8 // 1024, 1024))
    x = da.from_array(m, chunks=(8192, 1024))                   # 8 chunks of 64 MiB
    total, count, low = x.sum(), (x != 0).sum(), x.min()
    graph = dict(total.__dask_graph__())
    assert len(cloudpickle.dumps(graph)) < 64 * KIB

    got = _compute(client, total, count, low)
    assert [float(v) for v in got] == [sum(known.values()), len(known), -7.0]
    m.close()


STORE_TARGETS = ["Mapping r+", "Mapping w+", "ArrayRef", "ArrayRef of a strided view"]


def _store_target(path, kind, shape):
    """(what da.store writes into, the parent's view of the bytes it must land in)."""
    if kind == "Mapping w+":
        m = mmarray.open(path, dtype="f8", mode="w+", shape=shape)
        return m, m.array
    with open(path, "wb") as f:               # preallocated: all zeros
        f.truncate(int(np.prod(shape)) * 8)
    m = mmarray.open(path, dtype="f8", mode="r+", shape=shape)
    if kind == "Mapping r+":
        return m, m.array
    if kind == "ArrayRef":
        return mmarray.ref(m.array), m.array
    assert kind == "ArrayRef of a strided view", kind
    view = m.array[::2, ::-1]
    return mmarray.ref(view), view


@pytest.mark.parametrize("kind", STORE_TARGETS)
def test_distributed_store_into_a_shared_target_writes_the_file(tmp_path, da, client, kind):
    """The bug of #10: the workers wrote into copies, and the file stayed all zeros."""
    path = tmp_path / "target.f8"
    target, view = _store_target(path, kind, (800, 300))
    expected = np.arange(view.size, dtype="f8").reshape(view.shape)
    x = da.from_array(expected, chunks=(100, 150))
    client.compute(da.store(x, target, compute=False)).result(timeout=TIMEOUT)
    assert np.array_equal(view, expected)
    whole = np.zeros((800, 300))
    whole[...] = np.fromfile(path, dtype="f8").reshape(800, 300)
    if kind == "ArrayRef of a strided view":
        assert not whole[1::2].any()          # the rows between were not written
        whole = whole[::2, ::-1]
    assert np.array_equal(whole, expected)


@pytest.mark.parametrize("kind", ["Mapping", "ArrayRef",
                                  "memmap", "memmap slice"])
def test_distributed_worker_given_a_target_by_another_worker_writes_the_file(
        tmp_path, client, kind):
    """As in da.store(x, target): the target is a task result on one worker, and the tasks
    that write into it run wherever the scheduler puts them (for a memmap, which chunks went
    missing varied from run to run); here the write goes to the other worker on purpose."""
    path = tmp_path / "target.f8"
    mm = mmarray.memmap(path, dtype="f8", mode="w+", shape=(100, 50))
    target = {"Mapping": lambda: mmarray.mapping_of(mm), "ArrayRef": lambda: mmarray.ref(mm),
              "memmap": lambda: mm, "memmap slice": lambda: mm[10:20]}[kind]()
    holder, writer = sorted(client.scheduler_info()["workers"])
    held = client.submit(workers.same, target, workers=[holder], pure=False)
    report = client.submit(workers.fill_and_report, held, 7.0, workers=[writer],
                           allow_other_workers=False).result(timeout=TIMEOUT)
    assert report == {"type": type(target).__name__, "filename": target.filename}
    written = np.fromfile(path, dtype="f8").reshape(100, 50)
    assert (written[10:20] == 7).all() and (written[:10] == 7).all() == (kind != "memmap slice")
    mm.close()


def _to_dask_sources(tmp_path, data):
    raw = tmp_path / "raw.bin"
    with open(raw, "wb") as f:
        f.write(b"\x00" * 48)
        data.tofile(f)
    np.save(tmp_path / "x.npy", data)
    np.savez(tmp_path / "x.npz", other=np.arange(3), x=data)
    return {
        "raw": ((raw,), {"dtype": "f8", "shape": data.shape, "offset": 48}),
        "npy": ((tmp_path / "x.npy",), {}),
        "npz member": ((tmp_path / "x.npz",), {"key": "x"}),
    }


@pytest.mark.parametrize("source", ["raw", "npy", "npz member"])
def test_distributed_to_dask_tasks_map_only_their_chunk(tmp_path, da, client, source):
    data = _integers((600, 200), seed=7)
    args, kwargs = _to_dask_sources(tmp_path, data)[source]
    x = mmarray.to_dask(*args, chunks=(150, 100), **kwargs)
    assert x.numblocks == (4, 2)
    mapped = x.map_blocks(workers.mapped_nbytes_block, chunks=(1, 1), dtype=np.int64)
    total, column, per_task = _compute(client, x.sum(), x[:, 17], mapped)
    assert total == data.sum()
    assert np.array_equal(column, data[:, 17])
    # A chunk is 150 rows of 100 of the 200 columns: its bytes span 149 rows and a half.
    assert per_task.tolist() == [[(149 * 200 + 100) * 8] * 2] * 4


def test_distributed_workers_unmap_the_file_once_the_result_is_gathered(tmp_path, da, client):
    path = tmp_path / "released.f8"
    data = _integers_file(path, (400, 100))
    with mmarray.open(path, dtype="f8", mode="r", shape=data.shape) as m:
        assert _compute(client, da.from_array(m, chunks=(100, 100)).sum()) == [data.sum()]
    ref = mmarray.to_dask(path, dtype="f8", shape=data.shape, chunks=(100, 100))
    assert _compute(client, ref.sum()) == [data.sum()]
    deadline = time.monotonic() + 10
    while True:
        still = client.run(mapped_bytes, str(path))
        if not any(still.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(still.values()), still


# -- 5. what an unpickle does when the file changed under the reference -----------------------

# The sums of what each payload of _payloads refers to, as a receiver sees them.
PAYLOAD_SUMS = {"Mapping r": 499500.0, "Mapping w+": 499500.0,
                "ArrayRef": 14950.0, "memmap slice": 14950.0}


def _payloads(path):
    """Pickles of every kind of reference to a (100, 10) float64 file at ``path``: the
    Mappings span bytes 0..8000, the ArrayRef and the memmap slice rows 10..20 (800..1600)."""
    m = mmarray.open(path, dtype="f8", mode="w+", shape=(100, 10))
    m.array[:] = np.arange(1000).reshape(100, 10)
    m.flush()
    with mmarray.open(path, dtype="f8", mode="r", shape=(100, 10)) as r:
        payloads = {"Mapping r": pickle.dumps(r)}
    mm = mmarray.memmap(path, dtype="f8", mode="r+", shape=(100, 10))
    payloads.update({"Mapping w+": pickle.dumps(m),
                     "ArrayRef": pickle.dumps(mmarray.ref(m.array[10:20])),
                     "memmap slice": pickle.dumps(mm[10:20])})
    m.close()
    mm.close()
    assert all(len(p) < KIB for p in payloads.values())
    return payloads


_LOAD_IN_CHILD = """
    import json, pickle, numpy as np, mmarray
    with open({path!r}, "rb") as f:
        payloads = pickle.load(f)
    out = {{}}
    for name, payload in payloads.items():
        try:
            obj = pickle.loads(payload)
            data = np.asarray(obj)      # an ArrayRef maps on first use
            out[name] = ["ok", float(data.sum())]
        except Exception as exc:
            out[name] = [type(exc).__name__, str(exc)]
    print(json.dumps(out))
"""


def _load_in_child(tmp_path, payloads, prologue=""):
    """Unpickle (and for an ArrayRef, map) each payload in a fresh interpreter: name ->
    ["ok", sum] or [exception type name, message]."""
    payload_file = tmp_path / "payloads.pickle"
    payload_file.write_bytes(pickle.dumps(payloads))
    proc = run_python(prologue + _LOAD_IN_CHILD.format(path=str(payload_file)), timeout=TIMEOUT)
    assert_clean_exit(proc)
    return json.loads(proc.stdout)


def test_unpickle_of_a_deleted_file_is_file_not_found_and_creates_nothing(tmp_path):
    path = tmp_path / "gone.f8"
    payloads = _payloads(path)
    path.unlink()
    got = _load_in_child(tmp_path, payloads)
    for name, (error, message) in got.items():
        assert error == "FileNotFoundError" and str(path) in message, (name, message)
    assert not path.exists()


def test_unpickle_of_a_file_renamed_over_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "replaced.f8"
    payloads = _payloads(path)
    new = tmp_path / "new.f8"
    new.write_bytes(b"\x01" * 8000)         # same size, other content, other inode
    os.replace(new, path)
    got = _load_in_child(tmp_path, payloads)
    for name, (error, message) in got.items():
        assert error == "ValueError", (name, message)
        assert repr(str(path)) in message and "no longer the file that was pickled" in message
    assert path.read_bytes() == b"\x01" * 8000


def test_unpickle_of_a_file_deleted_and_created_again_is_refused_naming_the_path(tmp_path):
    path = tmp_path / "recreated.f8"
    payloads = _payloads(path)
    inode = path.stat().st_ino
    path.unlink()
    for attempt in range(2000):
        path.touch()
        if path.stat().st_ino == inode:
            break
        # ext4 gives a new file the lowest free inode of the group: keep this one taken,
        # so that the next file gets the next free one, up to the one just freed.
        path.rename(tmp_path / f"filler-{attempt}")
    else:
        pytest.skip("this filesystem gave the new file another inode: the rename test covers it")
    path.write_bytes(b"\x01" * 8000)
    got = _load_in_child(tmp_path, payloads)
    for name, (error, message) in got.items():
        assert error == "ValueError" and repr(str(path)) in message, (name, got)


def _replace_with(path, replacement):
    other = path.with_name("other.f8")
    if replacement == "symlink to the same file":
        os.rename(path, other)
        path.symlink_to(other)
        return "ok"
    if replacement == "symlink to another file":
        other.write_bytes(b"\x01" * 8000)    # made first: it cannot take over path's inode
        path.unlink()
        path.symlink_to(other)
        return "ValueError"
    path.unlink()
    if replacement == "fifo":                # opening it for reading would block: must not
        os.mkfifo(path)
        return "OSError"
    path.mkdir()
    return "IsADirectoryError"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs mkfifo() and symlinks")
@pytest.mark.parametrize("replacement", ["fifo", "directory", "symlink to another file",
                                         "symlink to the same file"])
def test_unpickle_of_a_path_now_naming_something_else_is_refused_at_once(tmp_path, replacement):
    path = tmp_path / "data.f8"
    payloads = _payloads(path)
    expected = _replace_with(path, replacement)
    got = _load_in_child(tmp_path, payloads)
    for name, (error, message) in got.items():
        assert error == expected, (name, message)
        if error == "ok":
            assert message == PAYLOAD_SUMS[name], name
        else:
            assert str(path) in message, (name, message)
    if replacement.startswith("symlink"):
        assert path.resolve().stat().st_size == 8000


def test_unpickle_of_a_file_truncated_below_the_range_is_refused_and_grows_nothing(tmp_path):
    path = tmp_path / "short.f8"
    payloads = _payloads(path)
    os.truncate(path, 1599)                 # one byte short of every payload's range
    got = _load_in_child(tmp_path, payloads)
    for name, (error, message) in got.items():
        assert error == "ValueError" and repr(str(path)) in message, (name, message)
    assert path.stat().st_size == 1599


def test_unpickle_of_a_file_still_long_enough_maps_the_bytes_that_remain(tmp_path):
    path = tmp_path / "short.f8"
    payloads = _payloads(path)
    os.truncate(path, 1600)                 # the slices still fit, the Mappings do not
    got = _load_in_child(tmp_path, payloads)
    assert got["ArrayRef"] == got["memmap slice"] == ["ok", PAYLOAD_SUMS["ArrayRef"]]
    assert got["Mapping r"][0] == got["Mapping w+"][0] == "ValueError"
    assert path.stat().st_size == 1600


def test_refusal_of_a_truncated_writable_payload_does_not_blame_mode_r(tmp_path):
    path = tmp_path / "short.f8"
    payloads = _payloads(path)
    os.truncate(path, 100)
    for name in ("Mapping w+", "ArrayRef", "memmap slice"):
        with pytest.raises(ValueError, match=repr(str(path))) as info:
            np.asarray(pickle.loads(payloads[name]))
        assert "mode 'r' and 'c'" not in str(info.value), name


_DROP_DAC_OVERRIDE = """
    import ctypes
    class _Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class _Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]
    _libc = ctypes.CDLL(None, use_errno=True)
    _header, _data = _Header(0x20080522, 0), (_Data * 2)()
    assert _libc.capget(ctypes.byref(_header), _data) == 0
    _data[0].effective &= ~0b110; _data[0].permitted &= ~0b110  # DAC_OVERRIDE, DAC_READ_SEARCH
    assert _libc.capset(ctypes.byref(_header), _data) == 0, ctypes.get_errno()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="drops Linux capabilities")
def test_unpickle_of_an_unreadable_file_is_permission_error(tmp_path):
    """As root the child drops the capabilities that ignore permission bits (it stays root,
    so it can still search pytest's 0700 directories); as anyone else it needs none."""
    path = tmp_path / "locked.f8"
    payloads = _payloads(path)
    path.chmod(0)
    try:
        prologue = _DROP_DAC_OVERRIDE if os.geteuid() == 0 else ""
        got = _load_in_child(tmp_path, payloads, prologue)
    finally:
        path.chmod(0o600)
    for name, (error, message) in got.items():
        assert error == "PermissionError" and str(path) in message, (name, message)
    assert path.stat().st_size == 8000


def test_ref_of_an_array_that_no_mapping_backs_is_a_type_error(tmp_path):
    np.arange(10.0).tofile(tmp_path / "plain.f8")
    numpy_map = np.memmap(tmp_path / "plain.f8", dtype="f8", mode="r")
    for array in (np.arange(10.0), numpy_map, np.asarray(numpy_map)[2:]):
        with pytest.raises(TypeError, match="not backed by"):
            mmarray.ref(array)
    del numpy_map


def test_copy_on_write_mapping_refuses_ref_and_pickle_and_says_to_pickle_a_copy(tmp_path):
    np.arange(10.0).tofile(tmp_path / "cow.f8")
    with mmarray.open(tmp_path / "cow.f8", dtype="f8", mode="c") as m:
        for share in (lambda: mmarray.ref(m.array[2:]), lambda: pickle.dumps(m)):
            with pytest.raises(TypeError, match=r"mode 'c'.*m\.array\.copy\(\)"):
                share()


def test_pickling_a_closed_mapping_is_a_value_error_naming_the_file(tmp_path):
    m = mmarray.open(tmp_path / "closed.f8", dtype="f8", mode="w+", shape=4)
    m.close()
    with pytest.raises(ValueError, match="closed.*closed.f8"):
        pickle.dumps(m)


def test_pickling_an_r_plus_npz_member_is_a_type_error(tmp_path):
    np.savez(tmp_path / "a.npz", a=np.arange(5))
    with mmarray.load(tmp_path / "a.npz", mode="r+") as archive:
        with pytest.raises(TypeError, match="mode 'r\\+'.*CRC"):
            pickle.dumps(archive["a"])


# -- 6. a truncated file never crashes the receiver ---------------------------------------------

def test_child_unpickling_a_mapping_of_a_file_truncated_to_zero_raises_not_sigbus(tmp_path):
    path = tmp_path / "emptied.f8"
    payloads = _payloads(path)
    os.truncate(path, 0)
    payload_file = tmp_path / "payloads.pickle"
    payload_file.write_bytes(pickle.dumps(payloads))
    proc = run_python(f"""
        import pickle, sys, numpy as np
        with open({str(payload_file)!r}, "rb") as f:
            payloads = pickle.load(f)
        for name in ("ArrayRef", "memmap slice", "Mapping r"):
            try:
                data = np.asarray(pickle.loads(payloads[name]))
            except ValueError as exc:
                print(name, "refused:", exc, file=sys.stderr)
            else:
                print(name, "mapped", data.sum())      # reading it would be SIGBUS
        m = pickle.loads(payloads["Mapping w+"])       # uncaught: the child must exit 1
        print("mapped", m.array.sum())
    """, timeout=TIMEOUT)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    for name in ("ArrayRef", "memmap slice", "Mapping r"):
        assert any(line.startswith(f"{name} refused:") and str(path) in line
                   for line in lines), proc.stderr
    assert lines[-1].startswith("ValueError: ") and str(path) in lines[-1], proc.stderr
    assert path.stat().st_size == 0
