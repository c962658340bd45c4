"""mmarray's benchmark cases, installed with the package: ``python -m mmarray bench`` runs them
from any directory.

``cases`` holds one function per case and the run-length presets, ``_timing`` the interleaved
timing, eviction and residency helpers, ``floor.c`` the C floor, compiled at run time where a
C compiler is found (package data). The command line is ``mmarray._bench_cli``; the asv suite
in the repository's ``benchmarks/`` imports the same cases from here.
"""
