"""``python -m exporters gpu|usage [--site S] [--listen HOST:PORT]`` (same as ``gpuhub exporter ...``)."""

import sys

from .server import main_gpu, main_usage

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("gpu", "usage"):
        print("usage: python -m exporters {gpu|usage} [--site SITE] [--listen HOST:PORT]", file=sys.stderr)
        sys.exit(2)
    sys.exit((main_gpu if sys.argv[1] == "gpu" else main_usage)(sys.argv[2:]))
