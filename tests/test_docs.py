"""Every example in mmarray's docstrings runs and prints what it says."""
import doctest
import importlib
import inspect
import pkgutil

import pytest

import mmarray


def _docstrings():
    seen = set()
    for info in pkgutil.iter_modules(mmarray.__path__):
        if info.name == "__main__":
            continue
        module = importlib.import_module(f"mmarray.{info.name}")
        yield f"mmarray.{info.name}", module.__doc__
        for name, obj in vars(module).items():
            # Public classes say they are mmarray's (Mapping.__module__ == "mmarray"): take
            # them from the module that defines them, once.
            owner = getattr(obj, "__module__", None)
            if owner != module.__name__ and not (owner == "mmarray" and inspect.isclass(obj)
                                                  and getattr(mmarray, name, None) is obj
                                                  and id(obj) not in seen):
                continue
            seen.add(id(obj))
            yield f"mmarray.{info.name}.{name}", getattr(obj, "__doc__", None)
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    doc = getattr(member, "__doc__", None)
                    if isinstance(member, property):
                        doc = member.fget.__doc__ if member.fget else None
                    yield f"mmarray.{info.name}.{name}.{attr}", doc
    yield "mmarray", mmarray.__doc__


EXAMPLES = {}
for _name, _doc in _docstrings():
    # once per docstring: mmarray.open (the engine's, showing the general open's docstring)
    # and the general open itself are two names for one
    if isinstance(_doc, str) and ">>>" in _doc and _doc not in EXAMPLES.values():
        EXAMPLES.setdefault(_name, _doc)


def test_there_are_examples_to_run():
    assert len(EXAMPLES) >= 5, sorted(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(EXAMPLES[name], {}, name, None, 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} example(s) failed in {name}"
