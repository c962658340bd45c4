"""``python -m mmarray <command>``. Commands: ``bench`` (run the benchmarks)."""
import sys

USAGE = """usage: python -m mmarray <command> [options]

commands:
  bench    run the benchmarks against numpy.memmap (see `python -m mmarray bench --help`)
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench":
        from mmarray import _bench_cli

        return _bench_cli.main(rest)
    print(f"mmarray: unknown command {command!r}\n{USAGE}", end="", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
