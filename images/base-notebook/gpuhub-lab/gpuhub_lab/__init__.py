"""gpuhub-lab: the hub's notices inside JupyterLab (server side).

``GET|POST|DELETE {base_url}gpuhub/notice`` (:mod:`gpuhub_lab.handlers`) holds the idle-GPU
warning that the hub's idle service sets; the JupyterLab plugin (``src/index.js``, built into
``labextension/``, installed to share/jupyter/labextensions/gpuhub-lab) shows it as a notification.
"""

from jupyter_server.utils import url_path_join

from gpuhub_lab.handlers import NoticeHandler

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_lab"}]


def _load_jupyter_server_extension(serverapp):
    route = url_path_join(serverapp.web_app.settings["base_url"], "gpuhub", "notice")
    serverapp.web_app.add_handlers(".*$", [(route, NoticeHandler)])
