"""Files that gpuhub writes into course members' containers (``/srv/nbgrader/config``).

They run inside the user's container with the image's nbgrader; the hub never imports them
(nbgrader is not installed in the hub). See :mod:`gpuhub.hub.courses` for the design.
"""
