# gpuhub: Jupyter Server settings for course members (see nbgrader_config.py next to this file).
# The images ship nbgrader's extensions off; jupyter_server_config.d/gpuhub-course-member.json in this
# folder turns them on for every member (gpuhub.hub.courses.MEMBER_CONFIG), and the lines below win over it.
# Formgrader and the course list are instructors' tools: off in the servers of those who teach
# no course (their formgrader would only show their own home folder anyway). Instructors get
# gpuhub_nbgrader's course list instead of nbgrader's, which looks for the local formgrader at
# the server's public URL, out of a container's reach.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpuhub_nbgrader
c = get_config()  # noqa: F821
_roles = {item.split(":", 1)[1] for item in os.environ.get("GPUHUB_COURSES", "").split(",") if ":" in item}
if "instructor" not in _roles:
    c.ServerApp.jpserver_extensions.update(
        {
            "nbgrader.server_extensions.formgrader": False,
            "nbgrader.server_extensions.course_list": False,
        }
    )
else:
    c.ServerApp.jpserver_extensions.update(
        {
            "nbgrader.server_extensions.course_list": False,
            "gpuhub_nbgrader": True,
        }
    )
