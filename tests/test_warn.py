"""mmarray._warn: warnings name the first caller outside the package, however many of the
package's frames (or compiled functions, which have none) lie in between."""
import sys
import warnings

import pytest

from mmarray import _warn


def _in_package(source, name="mmarray._fake"):
    # Functions whose frames belong to a module of the package (their globals' __name__).
    namespace = {"__name__": name, "_warn": _warn}
    exec(source, namespace)
    return namespace


def test_stacklevel_from_outside_the_package_is_one():
    assert _warn.stacklevel_outside_package() == 1


def test_stacklevel_skips_every_frame_of_the_package():
    ns = _in_package("def inner():\n    return _warn.stacklevel_outside_package()\n"
                     "def outer():\n    return inner()\n")
    assert ns["inner"]() == 2
    assert ns["outer"]() == 3


@pytest.mark.parametrize("name", ["mmarray_other.mod", "other.mmarray._api", "other"])
def test_a_module_named_like_the_package_but_outside_it_is_the_caller(name):
    ns = _in_package("def f():\n    return _warn.stacklevel_outside_package()\n", name=name)
    assert ns["f"]() == 1


def test_the_package_itself_counts_as_inside():
    ns = _in_package("def f():\n    return _warn.stacklevel_outside_package()\n",
                     name="mmarray")
    assert ns["f"]() == 2


def test_warn_at_caller_names_this_line_through_package_frames():
    ns = _in_package("def inner():\n    _warn.warn_at_caller('careful', UserWarning)\n"
                     "def outer():\n    inner()\n")
    with pytest.warns(UserWarning, match="careful") as caught:
        line = sys._getframe().f_lineno + 1
        ns["outer"]()
    assert caught[0].filename == __file__
    assert caught[0].lineno == line


def test_warn_at_caller_honours_filters():
    ns = _in_package("def f():\n    _warn.warn_at_caller('quiet', RuntimeWarning)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(RuntimeWarning, match="quiet"):
            ns["f"]()
