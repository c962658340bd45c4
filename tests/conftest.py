"""Shared fixtures for mmarray's tests; helper functions live in tests/helpers.py."""
import importlib
import os

import pytest

# Python modules setup.py compiles with Cython (COMPILED_PY there): an in-place build's
# extension shadows its .py, so an edit of the .py is not what runs until the next build.
COMPILED_PY = ("_api", "_compat", "_load", "_npz", "_npyformat", "_zipdir")


def pytest_configure(config):
    import mmarray

    package = os.path.dirname(mmarray.__file__)
    if os.path.basename(os.path.dirname(package)) != "src":
        return  # an installed package: its files come from one build
    for name in COMPILED_PY:
        module = importlib.import_module(f"mmarray.{name}")
        source = os.path.join(package, f"{name}.py")
        if module.__file__ != source and os.path.getmtime(source) > os.path.getmtime(
                module.__file__):
            raise pytest.UsageError(
                f"{source} is newer than its compiled {os.path.basename(module.__file__)}, "
                f"which is what runs: rebuild first (python setup.py build_ext --inplace)")

# Tests over ~3 s in files whose owners have not put @pytest.mark.slow on them yet (the other
# slow tests carry the mark themselves): marked here so `pytest -m "not slow"` stays a quick
# loop. Move a name onto its test as a decorator when that file is next edited.
SLOW = {
    "test_core.py": {"test_20000_mappings_under_rlimit_nofile_256",
                     "test_w_plus_racing_readers_in_threads_never_truncates_under_them"},
    "test_reliability.py": {
        "test_populate_ahead_loop_with_no_consumer_returns",
        "test_slow_populate_in_one_thread_does_not_stall_a_small_open_in_another",
        "test_maps_racing_w_plus_resets_that_shrink_the_file_never_outrun_it",
        "test_fork_while_another_thread_is_inside_open_leaves_a_working_child",
    },
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if getattr(item, "originalname", item.name) in SLOW.get(item.path.name, ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def data_file(tmp_path):
    """A 64 KiB + 13 byte file whose byte i is i % 251."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(i % 251 for i in range(65536 + 13)))
    return path


@pytest.fixture
def data(tmp_path):
    """A 4 KiB file holding the bytes 0..255 sixteen times (a Path; some modules define their
    own ``data``)."""
    path = tmp_path / "data.bin"
    path.write_bytes(bytes(range(256)) * 16)
    return path
