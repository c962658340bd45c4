"""Run the benchmarks without going through ``python -m mmarray``:
``python benchmarks/run.py [--quick] [--json FILE] ...`` (same options as ``mmarray bench``)."""
import os
import sys

if __name__ == "__main__":
    from mmarray import _bench_cli

    here = os.path.dirname(os.path.abspath(__file__))
    sys.exit(_bench_cli.main(["--bench-dir", here] + sys.argv[1:]))
