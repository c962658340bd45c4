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

engine = Extension(
    "mmarray._engine",
    sources=["src/mmarray/_engine.pyx", *MM_SOURCES, "csrc/mm_scan.c"],
    include_dirs=["csrc", numpy.get_include()],
    define_macros=define_macros + [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    depends=["csrc/mm.h", "csrc/mm_internal.h", "src/mmarray/_engine.pxd", "src/mmarray/_mm.pxd"],
)

setup(
    ext_modules=cythonize(
        [engine],
        compiler_directives={"language_level": "3"},
        include_path=["src"],
    ),
)
