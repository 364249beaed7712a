"""``python -m exporters gpu|usage [flags]`` is ``gpuhub exporter gpu|usage [flags]``.

The one parser lives in :mod:`gpuhub.cli`, which the exporters (a lower layer) may not import, so this alias
re-executes as ``python -m gpuhub exporter ...``: same flags, help and errors, and the same process id, so a
supervisor's signals still reach the exporter.
"""

import os
import sys

if __name__ == "__main__":
    os.execv(sys.executable, [sys.executable, "-m", "gpuhub", "exporter", *sys.argv[1:]])
