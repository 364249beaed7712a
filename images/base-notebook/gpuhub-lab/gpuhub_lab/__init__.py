"""gpuhub-lab: the hub's notices and the airlock inside JupyterLab (server side).

``GET|POST|DELETE {base_url}gpuhub/notice`` (:mod:`gpuhub_lab.handlers`) holds the idle-GPU
warning that the hub's idle service sets; ``{base_url}gpuhub/airlock`` (:mod:`gpuhub_lab.airlock_handlers`)
forwards the Lab entry "Request export…" to the hub's airlock service. The JupyterLab plugins (``src/*.js``,
built into ``labextension/``, installed to share/jupyter/labextensions/gpuhub-lab) show both.
``gpuhub-export`` / ``gpuhub-import`` (:mod:`gpuhub_lab.airlock`) are the terminal's side; Jupyter is imported
only when the server loads the extension, so those scripts start with the standard library alone.
"""

__version__ = "0.1.0"


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_lab"}]


def _load_jupyter_server_extension(serverapp):
    from jupyter_server.utils import url_path_join

    from gpuhub_lab.airlock_handlers import handlers as airlock_handlers
    from gpuhub_lab.handlers import NoticeHandler

    base_url = serverapp.web_app.settings["base_url"]
    route = url_path_join(base_url, "gpuhub", "notice")
    serverapp.web_app.add_handlers(".*$", [(route, NoticeHandler), *airlock_handlers(base_url)])
