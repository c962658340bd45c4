"""mmarray's benchmark cases (run them with ``python -m mmarray bench`` from the repo root).

``cases.py`` holds one function per case, ``_timing.py`` the interleaved timing, eviction and
residency helpers, ``floor.c`` the C floor compiled at run time. The CLI
(``mmarray._bench_cli``) finds this directory and imports it under a private package name, so
no ``benchmarks`` package is ever installed or shadowed.
"""
