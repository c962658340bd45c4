"""numpy's own tests, run against mmarray.memmap and mmarray.open_memmap.

Nothing of numpy's test code is copied here: each suite is loaded from the installed numpy and
run by pytest in a child process with a small plugin (``_Substitute`` below) that swaps in
mmarray's implementations before any test runs:

* ``numpy._core.tests.test_memmap``: the module global ``memmap`` becomes ``mmarray.memmap``,
  and every test of ``TestMemmap`` runs.
* ``numpy.lib.tests.test_format``: ``numpy.lib.format.open_memmap`` becomes
  ``mmarray.open_memmap`` (so the tests' ``format.open_memmap`` and ``np.load(mmap_mode=...)``
  both use it), and every test there that uses ``open_memmap`` runs.

The child writes a JSON report (outcome of each test, which tests called mmarray's code); the
outer test checks the exit code (a crash fails it), that every expected test ran and passed and
that none was skipped.
"""
from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

import mmarray

_HERE = os.path.dirname(os.path.abspath(__file__))
_CHILD_TIMEOUT = 600


def _import_numpy_test_module(name):
    try:
        with warnings.catch_warnings():  # numpy's markers are registered by numpy's conftest
            warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
            return importlib.import_module(name)
    except ImportError as exc:
        pytest.skip(f"the installed numpy ships no tests ({name} cannot be imported: {exc})")


class _Substitute:
    """pytest plugin for the child run: substitute mmarray's memmap/open_memmap, record results.

    Not used by the outer run; the child creates it (see ``_run_numpy_suite``).
    """

    def __init__(self, report_path, select=None):
        self.report_path = report_path
        self.select = set(select) if select else None  # test function or class names to run
        self.outcomes = {}           # nodeid -> "passed" / "failed" / "skipped" / "error"
        self.open_memmap_users = {}  # nodeid -> number of mmarray.open_memmap calls
        self.memmap_patched = {}     # nodeid -> True if the module's memmap was ours at call
        self.bad_results = []        # open_memmap results that were not mmarray.memmap
        self.current = None

    def pytest_configure(self, config):
        from numpy.lib import format as npy_format

        self._real_open_memmap = npy_format.open_memmap

        def open_memmap(*args, **kwargs):
            self.open_memmap_users[self.current] = self.open_memmap_users.get(self.current, 0) + 1
            result = mmarray.open_memmap(*args, **kwargs)
            if type(result) is not mmarray.memmap:
                self.bad_results.append(f"{self.current}: {type(result)!r}")
            return result

        # numpy.lib.format is what test_format calls as format.open_memmap and what np.load
        # calls for mmap_mode; the private module is patched too for any caller that uses it.
        npy_format.open_memmap = open_memmap
        try:
            from numpy.lib import _format_impl
        except ImportError:  # numpy < 2
            pass
        else:
            _format_impl.open_memmap = open_memmap
        for marker in ("slow: very slow test", "thread_unsafe: single-threaded test",
                       "leaks_references: known to leak references"):
            config.addinivalue_line("markers", marker)

    def pytest_collection_modifyitems(self, session, config, items):
        if self.select is not None:
            keep, drop = [], []
            for item in items:
                cls = getattr(item, "cls", None)
                names = {getattr(item, "originalname", item.name),
                         cls.__name__ if cls is not None else None}
                (keep if names & self.select else drop).append(item)
            items[:] = keep
            config.hook.pytest_deselected(items=drop)
        for item in items:
            module = getattr(item, "module", None)
            if module is not None and module.__name__.endswith("test_memmap"):
                module.memmap = mmarray.memmap

    def pytest_runtest_setup(self, item):
        self.current = item.nodeid

    def pytest_runtest_call(self, item):
        module = getattr(item, "module", None)
        if module is not None and module.__name__.endswith("test_memmap"):
            self.memmap_patched[item.nodeid] = module.memmap is mmarray.memmap

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.outcomes[report.nodeid] = "failed" if report.when == "call" else "error"
        elif report.skipped:
            self.outcomes[report.nodeid] = "skipped"
        elif report.when == "call":
            self.outcomes.setdefault(report.nodeid, "passed")

    def pytest_sessionfinish(self, session, exitstatus):
        with open(self.report_path, "w") as f:
            json.dump({"exitstatus": int(exitstatus), "outcomes": self.outcomes,
                       "open_memmap_users": self.open_memmap_users,
                       "memmap_patched": self.memmap_patched,
                       "bad_results": self.bad_results,
                       "mmarray_file": mmarray.__file__}, f, indent=1)


def _run_numpy_suite(tmp_path, module, select=None):
    """Run numpy's ``module`` under pytest in a child process with ``_Substitute``.

    ``select``: names of the test functions or classes to run (default: all).

    Returns (completed process, report dict or None).
    """
    report_path = tmp_path / "report.json"
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    # An ini file of our own: the child must not pick up this project's pytest options.
    (run_dir / "pytest.ini").write_text("[pytest]\n")
    args = ["--pyargs", module, "-p", "no:cacheprovider", "-q", "-rfEs"]
    try:
        import hypothesis  # noqa: F401  (numpy's conftest.py needs it)
    except ImportError:
        args.append("--noconftest")
    code = textwrap.dedent(f"""
        import sys, pytest
        from test_numpy_suites import _Substitute
        plugin = _Substitute({str(report_path)!r}, {sorted(select) if select else None!r})
        sys.exit(int(pytest.main({args!r}, plugins=[plugin])))
    """)
    # The child imports the very mmarray (and this module) that this process imported.
    src = os.path.dirname(os.path.dirname(os.path.abspath(mmarray.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [src, _HERE] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], cwd=run_dir,
                          env=env, capture_output=True, text=True, timeout=_CHILD_TIMEOUT)
    report = json.loads(report_path.read_text()) if report_path.exists() else None
    return proc, report


def _explain(proc):
    return (f"child pytest exited with {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-4000:]}")


def _format_tests_using_open_memmap(module):
    """Names of test_format's tests that use open_memmap, directly or through np.load."""
    names = []
    for name, func in vars(module).items():
        if name.startswith("test") and inspect.isfunction(func):
            source = inspect.getsource(func)
            if "open_memmap" in source or "mmap_mode" in source:
                names.append(name)
    return sorted(names)


@pytest.mark.slow
def test_numpy_memmap_suite_passes_against_mmarray_memmap(tmp_path):
    test_memmap = _import_numpy_test_module("numpy._core.tests.test_memmap")
    expected = sorted(n for n in dir(test_memmap.TestMemmap) if n.startswith("test"))
    assert expected, "numpy's TestMemmap has no tests"

    proc, report = _run_numpy_suite(tmp_path, "numpy._core.tests.test_memmap",
                                    select=["TestMemmap"])

    assert proc.returncode == 0, _explain(proc)
    assert report is not None, _explain(proc)
    assert report["mmarray_file"] == mmarray.__file__
    ran = {nodeid.rsplit("::", 1)[-1]: outcome for nodeid, outcome in report["outcomes"].items()}
    assert sorted(ran) == expected, _explain(proc)
    assert set(ran.values()) == {"passed"}, ran
    # Every test saw mmarray.memmap in place of numpy.memmap.
    assert len(report["memmap_patched"]) == len(expected)
    assert all(report["memmap_patched"].values()), report["memmap_patched"]


@pytest.mark.slow
def test_numpy_format_open_memmap_tests_pass_against_mmarray_open_memmap(tmp_path):
    test_format = _import_numpy_test_module("numpy.lib.tests.test_format")
    users = _format_tests_using_open_memmap(test_format)
    assert "test_memmap_roundtrip" in users, users  # the scan finds what it must

    proc, report = _run_numpy_suite(tmp_path, "numpy.lib.tests.test_format", select=users)

    assert proc.returncode == 0, _explain(proc)
    assert report is not None, _explain(proc)
    outcomes = report["outcomes"]
    ran = {nodeid.rsplit("::", 1)[-1].split("[", 1)[0] for nodeid in outcomes}
    assert ran == set(users), _explain(proc)
    assert set(outcomes.values()) == {"passed"}, outcomes
    assert report["bad_results"] == []
    # Each test whose code names open_memmap called mmarray's, and it was called at all.
    called = {nodeid.rsplit("::", 1)[-1].split("[", 1)[0]
              for nodeid, n in report["open_memmap_users"].items() if n}
    direct = {name for name in users
              if "open_memmap" in inspect.getsource(getattr(test_format, name))}
    assert direct <= called, (direct, called)
    assert sum(report["open_memmap_users"].values()) > 0


def test_suite_harness_reports_a_crashing_child_as_failed(tmp_path):
    # A "suite" whose test kills the interpreter: the harness must see a non-zero exit code
    # and no report, which the suite tests above turn into failures.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "crashing_suite.py").write_text("import os\n\ndef test_crash():\n    os.abort()\n")

    proc, report = _run_numpy_suite(tmp_path, "crashing_suite")

    assert proc.returncode != 0
    assert report is None
