"""Static types: ``mypy --strict`` on ``typing_usage.py`` (the public API as a user's script
sees it) and on the package's annotated modules, ``stubtest`` of the engine's stub against the
built engine, and the ``Literal`` types kept equal to what the code accepts."""
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import typing_usage

import mmarray
from mmarray import _api, _engine, _ranges

ROOT = Path(__file__).resolve().parent.parent
USAGE = Path(__file__).with_name("typing_usage.py")
# The package's annotated modules, checked strictly. The others (_npy, _npz, _bench_cli,
# __main__) are not annotated yet: add each here once it is.
TYPED = ["__init__.py", "_access.py", "_api.py", "_append.py", "_compat.py", "_dask.py",
         "_engine.pyi", "_errors.py", "_fileref.py", "_guard.py", "_mapping.py", "_ranges.py",
         "_share.py"]

ARRAY = "numpy.ndarray[Any, numpy.dtype[Any]]"
MAPPING = "mmarray._mapping.Mapping"
MEMMAP = "mmarray._compat.memmap"
SHORT_MODE = "Literal['r'] | Literal['r+'] | Literal['w+'] | Literal['c']"
# reveal_type(<expression>) in typing_usage.py -> the type mypy must reveal.
EXPECTED = {
    "m": MAPPING,
    "m.array": ARRAY,
    "m.shape": "tuple[int, ...]",
    "m.dtype": "numpy.dtype[Any]",
    "m.mode": SHORT_MODE,
    "m.order": "Literal['C'] | Literal['F']",
    "m.offset": "int",
    "m.filename": "str | None",
    "m.nbytes": "int",
    "m.size": "int",
    "m.exports": "int",
    "m.closed": "bool",
    "fraction": "float",
    "p": "mmarray._access.Prefetch",
    "finished": "bool",
    "p.done": "bool",
    "m.chunks(2)": f"typing.Iterator[{ARRAY}]",
    "raw": "numpy.ndarray[tuple[Any, ...], numpy.dtype[Any]]",
    "found": f"{MAPPING} | None",
    "r": MAPPING,
    "c": MAPPING,
    "mmarray.MODES": f"tuple[{SHORT_MODE}, ...]",
    "mm": MEMMAP,
    "mm.closed": "bool",
    "mm.filename": "str | None",
    "mm.offset": "int",
    "mm.mode": "str",
    "w": MEMMAP,
    "mm.__enter__()": MEMMAP,
    "shared": "mmarray._share.ArrayRef",
    "shared.array": "numpy.ndarray[Any, Any]",
    "shared.shape": "tuple[int, ...]",
    "m.ndim": "int",
    "m.__reduce__()": "tuple[Any, ...]",
    "mmarray.to_dask": "def (file: str | os.PathLike[str], chunks: Any =, *, key: str | None =, "
                       "name: str | None =, **arguments: Any) -> dask.array.core.Array",
}


def test_literal_types_match_what_the_code_accepts():
    assert typing.get_args(_ranges.Advice) == tuple(_engine.ADVICE)
    assert typing.get_args(_api.ShortMode) == _api.MODES
    assert sorted(typing.get_args(_api.Mode)) == sorted(_api._MODE_SPEC)
    assert typing.get_args(_ranges.Order) == ("C", "F")


def test_usage_runs(tmp_path):
    typing_usage.usage(str(tmp_path))


def test_wrong_calls_fail_at_runtime_too(tmp_path):
    for call in typing_usage.wrong_calls(str(tmp_path)):
        with pytest.raises((TypeError, ValueError, AttributeError)):
            call()


def test_mypy_strict(tmp_path):
    """The usage script and the annotated modules pass ``mypy --strict``: every wrong call is
    rejected (``warn_unused_ignores``) and every revealed type is the expected one."""
    pytest.importorskip("mypy")
    # Files given are checked; what they import (numpy, the modules not annotated yet) is
    # followed for its types but its errors are not reported here.
    files = [str(USAGE)] + [str(ROOT / "src" / "mmarray" / name) for name in TYPED]
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--strict", "--follow-imports=silent", "--cache-dir", str(tmp_path / "cache"),
           "--no-color-output", "--no-error-summary", *files]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MYPY_FORCE_COLOR": "0"})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output

    expressions = {}
    for number, line in enumerate(USAGE.read_text().splitlines(), 1):
        match = re.fullmatch(r"\s*reveal_type\((.+)\)", line)
        if match:
            expressions[number] = match.group(1)
    revealed = {}
    for match in re.finditer(r'typing_usage\.py:(\d+): note: Revealed type is "(.+)"', output):
        # mypy < 2 writes builtins.int where mypy 2 writes int
        revealed[expressions[int(match.group(1))]] = match.group(2).replace("builtins.", "")
    assert revealed == EXPECTED


def test_engine_stub_matches_the_built_engine(tmp_path):
    """_engine.pyi against the compiled module (names, kinds, signatures): stubtest."""
    pytest.importorskip("mypy")
    cmd = [sys.executable, "-m", "mypy.stubtest", "mmarray._engine", "--concise",
           "--mypy-config-file", str(ROOT / "pyproject.toml")]
    if sys.version_info < (3, 12):  # the buffer protocol's methods appear in Python 3.12
        allowlist = tmp_path / "allowlist.txt"
        allowlist.write_text(r"mmarray\._engine\.[A-Za-z_]+\.__(release_)?buffer__" + "\n")
        cmd += ["--allowlist", str(allowlist)]
    # The engine the tests import (built in place, or installed) against the checkout's stub.
    env = {**os.environ, "PYTHONPATH": str(Path(mmarray.__file__).parent.parent)}
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
