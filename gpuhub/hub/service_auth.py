"""Who sent a request to one of gpuhub's hub services: the owner of the hub API token in its header.

The quota service's status and queue APIs and the airlock's REST API take tokens only from the
``Authorization`` header (``token ...`` or ``bearer ...``, as JupyterHub's own API does), never from cookies or the
query string, so a link or a form on another page cannot act with a user's rights.
"""

from __future__ import annotations


async def token_owner(auth, request) -> dict | None:
    """The hub's model of the token's owner (user or service), looked up through ``auth`` (a ``HubAuth``, its
    cache included); None without a token or for one the hub does not know."""
    header = request.headers.get("Authorization", "")
    token = header.split(None, 1)[1] if header.lower().startswith(("token ", "bearer ")) else ""
    return await auth.user_for_token(token, use_cache=True, sync=False) if token else None
