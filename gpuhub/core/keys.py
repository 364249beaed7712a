"""The name of one server in the ledger, the allocations, the reconciler and the spawner.

``server_key(user, server_name)`` is ``"<user>/<server name>"``: ``"alice/"`` for alice's default
server, ``"alice/exp1"`` for her server ``exp1``. JupyterHub allows no ``/`` in a username or a
server name, so :func:`split_server_key` inverts it exactly. Pure, no configuration.
"""

from __future__ import annotations

SEPARATOR = "/"


def server_key(user: str, server_name: str = "") -> str:
    """The key of ``user``'s server ``server_name`` ("" is the default server)."""
    return f"{user}{SEPARATOR}{server_name}"


def split_server_key(key: str) -> tuple[str, str]:
    """``(user, server_name)`` of a key made by :func:`server_key`."""
    user, _, server_name = key.partition(SEPARATOR)
    return user, server_name
