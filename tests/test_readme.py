"""The README's Python examples run, in order, as a reader would paste them."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def _blocks():
    if not README.exists():  # an installed copy of the tests without the checkout
        return []
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert (tmp_path / "data.f32").stat().st_size == 1000 * 256 * 4
    assert (tmp_path / "aligned.npz").exists()


def _scripts():
    """The README's ```py blocks: whole scripts (multiprocessing needs an importable main)."""
    if not README.exists():
        return []
    return re.findall(r"```py\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


@pytest.mark.skipif(not README.exists(), reason="README.md is not beside the tests")
@pytest.mark.parametrize("index", range(3))
def test_readme_sharing_scripts_run_as_scripts(tmp_path, index):
    scripts = _scripts()
    assert len(scripts) == 3
    script = scripts[index]
    if "dask" in script:
        pytest.importorskip("distributed")
    (tmp_path / "example.py").write_text(script, encoding="utf-8")
    import mmarray  # the one under test, installed or from a checkout's src/

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
