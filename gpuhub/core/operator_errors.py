"""The errors an operator can cause at the command line, and the one way ``gpuhub`` reports them."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from gpuhub.core.siteconfig_reader import SiteConfigError


class OperatorError(Exception):
    """A mistake the operator can fix (a bad argument, a missing file, an unmigrated database); the message
    names the fix. ``gpuhub`` prints it as ``gpuhub: error: MESSAGE`` and exits 2, without a traceback."""


def guarded(fn: Callable, *also: type[BaseException]) -> Callable:
    """``fn(args)``, with :class:`OperatorError`, a bad site config and ``also`` reported as one error line, exit 2."""
    errors = (OperatorError, SiteConfigError, *also)

    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except errors as e:
            print(f"gpuhub: error: {e}", file=sys.stderr)
            return 2

    return run
