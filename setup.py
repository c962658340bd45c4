"""Build the Cython engine against the C mapping layer; the platform picks the C file."""
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

# One contract (csrc/mm.h), one implementation per platform: no #ifdef in function bodies.
# The fault guard (SIGBUS -> zero page + record) is POSIX only; mm_win32.c has its stubs.
MM_SOURCES = (["csrc/mm_win32.c"] if sys.platform == "win32"
              else ["csrc/mm_posix.c", "csrc/mm_guard.c"])
define_macros = ([] if sys.platform == "win32"
                 else [("_FILE_OFFSET_BITS", "64"), ("_GNU_SOURCE", None)])

# The C layer's functions are global symbols of the extension: by default every call to one,
# also from another of its files, goes through the PLT, since the dynamic linker could bind
# it elsewhere ("semantic interposition"). Hidden, they are called directly (GCC manual,
# Code Gen Options, -fvisibility; the module's init function stays exported: CPython marks
# PyMODINIT_FUNC visible). Callgrind: ~25 instructions fewer per open + array + close.
hidden = [] if sys.platform == "win32" else ["-fvisibility=hidden"]

engine = Extension(
    "mmarray._engine",
    sources=["src/mmarray/_engine.pyx", *MM_SOURCES, "csrc/mm_scan.c"],
    include_dirs=["csrc", numpy.get_include()],
    define_macros=define_macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=hidden,
    depends=["csrc/mm.h", "csrc/mm_internal.h", "src/mmarray/_engine.pxd", "src/mmarray/_mm.pxd"],
)

# Python modules of the API compiled as they are (their .py stays the source, also shipped):
# the hot entry points lose the interpreter's frame and argument handling. Measured against the
# C floor of the same system calls (bench A/B, 3 runs each): mmarray.memmap open+close 1.84x ->
# 1.70x, mmarray.load over 1,000 distinct .npy files 1.54x -> 1.48x, mmarray.open 1.45x ->
# 1.43x; the .npz modules: a member open 13.4-15.6x -> 17.4-19.2x np.load (its instructions
# 198k -> 171k, callgrind). Annotations stay annotations (annotation_typing off: `offset: int`
# must still take numpy integers), and functions keep their introspection (binding: signature,
# __doc__). Not _npzcrc: its CRC-32 passes over whole members (gigabytes in an 'r+' open, flush
# or close) must run bytecode between chunks, where Python handles Ctrl-C; compiled, the pass
# runs to its end first.
COMPILED_PY = ["_api", "_compat", "_load", "_npz", "_npyformat", "_zipdir"]
compiled_py = [Extension(f"mmarray.{name}", [f"src/mmarray/{name}.py"]) for name in COMPILED_PY]

setup(
    ext_modules=cythonize([engine], compiler_directives={"language_level": "3"},
                          include_path=["src"])
    + cythonize(compiled_py, compiler_directives={"language_level": "3",
                                                  "annotation_typing": False,
                                                  "binding": True}),
)
