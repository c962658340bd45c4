"""Modules in one direction: no import cycles among mmarray's modules, and the engine does not
pull in the .npy/.npz layer."""
import ast
import importlib
import os
import re
import subprocess
import sys

import mmarray

PACKAGE = "mmarray"
INSTALLED = os.path.dirname(os.path.abspath(mmarray.__file__))  # what `import mmarray` runs
# The sources: the checkout's (the tests live in it), whose engine is a .pyx to read; an
# installed copy has only the compiled engine.
_CHECKOUT_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "src",
                             PACKAGE)
SRC = (os.path.normpath(_CHECKOUT_SRC) if os.path.isfile(os.path.join(_CHECKOUT_SRC,
                                                                        "_engine.pyx"))
       else os.path.dirname(os.path.abspath(mmarray.__file__)))
NPY_NPZ_LAYER = ["_load", "_npy", "_npyformat", "_npz", "_npzcrc", "_npzwrite", "_zipdir"]
# Every module is checked: the engine imports no module of the package (it is handed its
# error factory by _errors), so nothing needs leaving out.
NOT_YET_CHECKED: set = set()


def _module_files():
    """Module name ('mmarray' for the package itself) -> source file."""
    files = {}
    for entry in sorted(os.listdir(SRC)):
        stem, ext = os.path.splitext(entry)
        if ext in (".py", ".pyx"):
            files[PACKAGE if stem == "__init__" else stem] = os.path.join(SRC, entry)
    return files


def _is_type_checking(test):
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree):
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``: imports there exist
    for the type checker only and never run, so they make no import-time cycle."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports_py(source, modules):
    """The mmarray modules a Python source imports when it runs, anywhere in it (inside
    functions too; not under ``if TYPE_CHECKING:``)."""
    found = set()
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == PACKAGE:
                    found.add(parts[1] if len(parts) > 1 else PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative (from . import x, from .x import y): mmarray is flat
                parts = [PACKAGE] + (node.module.split(".") if node.module else [])
            elif node.module:
                parts = node.module.split(".")
            else:
                continue
            if parts[0] != PACKAGE:
                continue
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from mmarray import a, b: submodules, or names of the package itself
                for alias in node.names:
                    found.add(alias.name if alias.name in modules else PACKAGE)
    return found


# One import statement a line (a parenthesized list may span lines): "from mmarray import a, b",
# "from mmarray.x import y", "import mmarray.x" (and their cimport forms).
_PYX_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+mmarray(?:\.(\w+))?[ \t]+c?import[ \t]+"
                         r"(\([\w\s,]*\)|[\w \t,]+)|c?import[ \t]+mmarray\.(\w+))", re.M)


def _imports_pyx(source, modules):
    """The same for a Cython source, which ``ast`` cannot parse: its import lines."""
    found = set()
    for sub, names, plain in _PYX_IMPORT.findall(source):
        if plain or sub:
            found.add(plain or sub)
        else:
            for item in names.strip("()").split(","):  # "a", "b as c"
                if item.split():
                    name = item.split()[0]
                    found.add(name if name in modules else PACKAGE)
    return found


def import_graph():
    files = _module_files()
    graph = {}
    for name, path in files.items():
        with open(path, encoding="utf-8") as f:
            source = f.read()
        if path.endswith(".pyx"):
            deps = _imports_pyx(source, files)
        else:
            deps = _imports_py(source, files)
        graph[name] = sorted(d for d in deps if d != name and d in files)
    return graph


def find_cycles(graph, skip=()):
    """Every strongly connected component of more than one module (or a self-import)."""
    nodes = [n for n in graph if n not in skip]
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w in skip:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in nodes:
        if v not in index:
            visit(v)
    return cycles


def test_every_module_imports():
    for name in _module_files():
        if name == PACKAGE:
            continue
        importlib.import_module(f"{PACKAGE}.{name}")


def test_the_graph_sees_function_level_and_from_imports():
    graph = import_graph()
    assert "_bench_cli" in graph["__main__"]  # imported inside main()
    assert "_engine" in graph["_api"]
    assert set(NPY_NPZ_LAYER) <= set(graph)


def test_no_import_cycles():
    graph = import_graph()
    cycles = find_cycles(graph, skip=NOT_YET_CHECKED)
    assert not cycles, (f"import cycles among mmarray modules: {cycles}; imports must go one "
                        f"way (graph: {graph})")


def test_type_checking_imports_are_not_runtime_edges():
    source = ("from typing import TYPE_CHECKING\nimport mmarray._a\n"
              "if TYPE_CHECKING:\n    from mmarray._b import X\nelse:\n    import mmarray._c\n")
    assert _imports_py(source, {"_a", "_b", "_c"}) == {"_a", "_c"}


def test_find_cycles_finds_a_cycle():
    graph = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"], "e": ["e"]}
    assert sorted(find_cycles(graph)) == [["a", "b", "c"], ["e"]]
    assert find_cycles(graph, skip={"b", "e"}) == []


def test_the_engine_does_not_import_the_npy_npz_layer():
    # The package's __init__ imports everything, so the engine is imported under a bare
    # package object: what lands in sys.modules is what the engine itself pulls in.
    code = f"""if True:
        import sys, types
        pkg = types.ModuleType({PACKAGE!r})
        pkg.__path__ = [{INSTALLED!r}]
        sys.modules[{PACKAGE!r}] = pkg
        import mmarray._engine
        print(sorted(m for m in sys.modules if m.startswith("mmarray.")))
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = {m.split(".", 1)[1] for m in ast.literal_eval(out.strip())}
    assert "_engine" in loaded
    assert not loaded & set(NPY_NPZ_LAYER), f"the engine imported {sorted(loaded)}"
    # and no Python module of the package at all: policy lives above the engine
    assert loaded == {"_engine"}, f"the engine imported {sorted(loaded - {'_engine'})}"
