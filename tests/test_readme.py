"""The README's Python examples run, in order, as a reader would paste them."""
import pathlib
import re

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
