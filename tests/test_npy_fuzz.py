"""Property-based fuzzing of mmarray.load on mutated .npy and .npz files.

The hypothesis properties run in a child interpreter (this file run as a script), so that a
crash -- SIGSEGV, SIGBUS, an abort -- fails the outer pytest test through the exit code
instead of killing the test run. The property: loading a mutated file (and every member of a
mutated archive) either raises an exception derived from ValueError or OSError, or succeeds
with the data an independent reader finds in the file (numpy.lib.format for .npy; zipfile's
directory, the local header and numpy.lib.format for .npz members).
"""
import os
import subprocess
import sys

import pytest

HERE = os.path.abspath(__file__)
# Examples per property; with derandomize the run is the same every time. About 20 s per
# target on a 2-core machine, the two targets in parallel.
# MMARRAY_FUZZ_EXAMPLES overrides both, for a longer run by hand.
EXAMPLES = dict.fromkeys(("npy", "npz"), int(os.environ.get("MMARRAY_FUZZ_EXAMPLES", 3000)))


@pytest.mark.slow
def test_mutated_npy_and_npz_files_load_or_fail_cleanly_in_a_subprocess(tmp_path):
    pytest.importorskip("hypothesis")
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONHASHSEED="0")
    procs = {t: subprocess.Popen([sys.executable, HERE, t, str(tmp_path)], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for t in EXAMPLES}
    outputs = {t: p.communicate(timeout=600)[0] for t, p in procs.items()}
    for t, p in procs.items():
        assert p.returncode == 0, (f"fuzzing {t} exited with {p.returncode} (negative: killed "
                                   f"by a signal, i.e. a crash)\n{outputs[t][-6000:]}")
        assert "no crash, no wrong data" in outputs[t], outputs[t][-2000:]


# -- the child process ------------------------------------------------------------------------

def _child(target, workdir):  # pragma: no cover - runs in the subprocess
    import io
    import random
    import struct
    import tempfile
    import warnings
    import zipfile
    import zlib

    import numpy as np
    from hypothesis import HealthCheck, given, note, settings
    from hypothesis import strategies as st
    from numpy.lib import format as npformat

    import mmarray
    from mmarray import _npzwrite as _npz
    from _npy_helpers import write_npz_with_descriptors  # tests/ is sys.path[0] here

    warnings.simplefilter("ignore")
    fd, path = tempfile.mkstemp(suffix="." + target, dir=workdir)
    os.close(fd)
    count = [0, 0]  # examples, examples where something loaded and was checked

    def npy(arr, version=None):
        buf = io.BytesIO()
        npformat.write_array(buf, arr, version=version)
        return buf.getvalue()

    def same(a, b):
        assert a.dtype == b.dtype, (a.dtype, b.dtype)
        assert a.shape == b.shape, (a.shape, b.shape)
        if a.dtype.names:
            for name in a.dtype.names:
                assert a[name].tobytes() == b[name].tobytes(), name
        else:
            assert a.tobytes() == b.tobytes()

    def read_npy(raw):
        """numpy's reader on bytes, or None when it refuses them. For a descr that is a
        subarray (``'8f8'``: a mutated ``'<f8'``), which read_array reads wrongly (too many
        elements, or an empty array without the subarray's axes), np.load(mmap_mode='r')
        on the same bytes: what mmarray.load mirrors."""
        try:
            f = io.BytesIO(raw)
            version = npformat.read_magic(f)
            readers = {(1, 0): npformat.read_array_header_1_0,
                       (2, 0): npformat.read_array_header_2_0}
            subarray = version in readers and readers[version](f)[2].subdtype is not None
        except Exception:
            subarray = False
        try:
            if not subarray:
                return npformat.read_array(io.BytesIO(raw), allow_pickle=False)
            copy = path + ".ref.npy"
            with open(copy, "wb") as out:
                out.write(raw)
            mapped = np.load(copy, mmap_mode="r")
            try:
                return np.array(mapped, copy=True)
            finally:
                del mapped
        except Exception:
            return None

    alphabet = b"0123456789 ,()'<>|=fiubcUSVMTF\n"

    def mutated(base, rnd, hot):
        """1 to 4 byte edits (half of them in the ``hot`` structural ranges, half of the
        values header-plausible characters), and sometimes a truncation."""
        data = bytearray(base)
        edits = []
        for _ in range(rnd.choice((1, 1, 1, 1, 2, 2, 3, 4))):
            if rnd.random() < 0.5:
                lo, hi = rnd.choice(hot)
                where = rnd.randrange(lo, min(hi, len(data)))
            else:
                where = rnd.randrange(len(data))
            value = rnd.randrange(256) if rnd.random() < 0.5 else rnd.choice(alphabet)
            data[where] = value
            edits.append((where, value))
        cut = rnd.randrange(len(data) + 1) if rnd.random() < 0.2 else None
        if cut is not None:
            del data[cut:]
        note(f"edits (offset, new byte): {edits}; truncated to: {cut}")
        return bytes(data)

    def hot_ranges(base):
        if base[:6] == b"\x93NUMPY":
            return [(0, 80)]
        spots = [base.find(b"PK")]
        while spots[-1] >= 0:
            spots.append(base.find(b"PK", spots[-1] + 2))
        return [(p, p + 46) for p in spots[:-1]]

    # Positions and values come from a Random seeded by hypothesis: uniform over the file,
    # where hypothesis's own integers would favour small offsets (the magic string). The
    # edits made are noted, so a failure prints them.
    randoms = st.integers(0, 2**64 - 1).map(random.Random)
    modes = st.sampled_from(["r", "c", "r+"])
    config = settings(max_examples=EXAMPLES[target], deadline=None, derandomize=True,
                      database=None, print_blob=True,
                      suppress_health_check=list(HealthCheck))

    if target == "npy":
        bases = [npy(np.arange(6, dtype="<i4").reshape(2, 3)),
                 npy(np.asfortranarray(np.arange(6.0).reshape(3, 2))),
                 npy(np.zeros(3, [("a", "<i2"), ("b", "<f4")])),
                 npy(np.arange(4, dtype=">u2"), version=(2, 0)),
                 npy(np.array(["x", "yz"]), version=(3, 0)),
                 npy(np.float64(1.5)), npy(np.zeros((0, 2))),
                 npy(np.arange(64, dtype="<f4").reshape(8, 8))]
        hot = [hot_ranges(b) for b in bases]
        rows = st.none() | st.tuples(st.integers(-4, 4), st.integers(-4, 4)).map(
            lambda t: slice(*t))

        @config
        @given(base=st.sampled_from(range(len(bases))), rnd=randoms, mode=modes, rows=rows)
        def prop(base, rnd, mode, rows):
            count[0] += 1
            data = mutated(bases[base], rnd, hot[base])
            with open(path, "wb") as f:
                f.write(data)
            try:
                m = mmarray.load(path, mode=mode, rows=rows)
            except (ValueError, OSError):
                return
            with m:
                got = np.array(m.array, copy=True, order="K")
            count[1] += 1
            ref = read_npy(data)
            assert ref is not None, "mmarray loaded a file numpy refuses"
            if rows is not None:  # rows run along the first axis (C) or the last (Fortran)
                ref = ref[rows] if m.order == "C" else ref[..., rows]
            same(got, ref)
    else:
        def archive(write):
            buf = io.BytesIO()
            write(buf)
            return buf.getvalue()

        arrays = {"a": np.arange(5, dtype="<i2"), "b": np.ones((2, 2), ">f4")}

        def with_descriptors(buf):
            write_npz_with_descriptors(buf, arrays)

        def zip64(buf):
            old = _npz._ZIP_FILECOUNT_LIMIT
            _npz._ZIP_FILECOUNT_LIMIT = 0
            try:
                mmarray.save_npz(buf, **arrays)
            finally:
                _npz._ZIP_FILECOUNT_LIMIT = old

        bases = [archive(lambda b: np.savez(b, **arrays)),
                 archive(lambda b: np.savez_compressed(b, **arrays)),
                 archive(lambda b: mmarray.save_npz(b, **arrays)),
                 archive(with_descriptors), archive(zip64)]
        hot = [hot_ranges(b) for b in bases]

        # zipfile refuses entries whose "version needed" exceeds what it implements (6.3);
        # that says nothing about where the data is, and mmarray does not check it.
        zipfile.MAX_EXTRACT_VERSION = 0xFF

        def reference(key):
            """The member as zipfile's directory and the local header place it, or None."""
            try:
                with zipfile.ZipFile(path) as zf:
                    infos = {i.filename: i for i in zf.infolist()}
                info = infos.get(key + ".npy") or infos[key]
                with open(path, "rb") as f:
                    f.seek(info.header_offset)
                    nlen, elen = struct.unpack("<HH", f.read(30)[26:30])
                    f.seek(info.header_offset + 30 + nlen + elen)
                    raw = f.read(info.compress_size)
                if info.compress_type == zipfile.ZIP_DEFLATED:
                    raw = zlib.decompress(raw, -15)
            except Exception:
                return None
            if raw[:6] != b"\x93NUMPY":
                return np.frombuffer(raw, np.uint8)
            return read_npy(raw)

        @config
        @given(base=st.sampled_from(range(len(bases))), rnd=randoms, mode=modes)
        def prop(base, rnd, mode):
            count[0] += 1
            data = mutated(bases[base], rnd, hot[base])
            with open(path, "wb") as f:
                f.write(data)
            try:
                npz = mmarray.load(path, mode=mode, compressed="ignore")
            except (ValueError, OSError):
                return
            got = {}
            with npz:
                for key in list(npz):
                    try:
                        got[key] = np.array(npz[key].array, copy=True, order="K")
                    except (ValueError, OSError):
                        pass
            count[1] += bool(got)
            for key, value in got.items():
                ref = reference(key)
                assert ref is not None, f"mmarray read member {key!r}, the reference cannot"
                same(value, ref)

    prop()
    print(f"{target}: {count[0]} examples ({count[1]} loaded and checked against the "
          f"reference), no crash, no wrong data")


if __name__ == "__main__":  # pragma: no cover
    _child(sys.argv[1], sys.argv[2])
