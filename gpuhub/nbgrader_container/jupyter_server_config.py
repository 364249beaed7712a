# gpuhub: Jupyter Server settings for course members (see nbgrader_config.py next to this file).
# Formgrader and the course list are instructors' tools: off in the servers of those who teach
# no course (their formgrader would only show their own home folder anyway).
import os

c = get_config()  # noqa: F821
_roles = {item.split(":", 1)[1] for item in os.environ.get("GPUHUB_COURSES", "").split(",") if ":" in item}
if "instructor" not in _roles:
    c.ServerApp.jpserver_extensions.update({
        "nbgrader.server_extensions.formgrader": False,
        "nbgrader.server_extensions.course_list": False,
    })
