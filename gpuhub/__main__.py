"""``python -m gpuhub ...`` is the ``gpuhub`` command (:func:`gpuhub.cli.main`)."""

import sys

from gpuhub.cli import main

if __name__ == "__main__":
    sys.exit(main())
