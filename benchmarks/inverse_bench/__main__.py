"""`python -m benchmarks.inverse_bench [options]`: the same as `dbproxy bench inverse [options]`."""

import sys

from dbproxy.bench_cli import main

if __name__ == "__main__":
    raise SystemExit(main(["inverse", *sys.argv[1:]]))
