# nbgrader config for gpuhub course members. Written by the hub into a read-only volume on
# JUPYTER_CONFIG_PATH; your ~/.jupyter/nbgrader_config.py and a nbgrader_config.py in the current
# folder still take precedence, as nbgrader's docs describe. Your courses come from the
# environment the hub sets: GPUHUB_COURSES=ml101:instructor,cs50:student.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # gpuhub_nbgrader

c = get_config()  # noqa: F821
_home = os.environ.get("HOME") or "/home/jovyan"
_courses = dict(item.split(":", 1) for item in os.environ.get("GPUHUB_COURSES", "").split(",") if ":" in item)

# The exchange: /srv/nbgrader/exchange/<course> is a volume mounted only for the course's members.
# groupshared: the exchange root is not writable (nobody needs it to be), and instructors of a
# course share its folders through the course's group.
c.Exchange.root = "/srv/nbgrader/exchange"
c.CourseDirectory.groupshared = True
c.Authenticator.plugin_class = "gpuhub_nbgrader.GpuhubAuthPlugin"
c.ExchangeFactory.submit = "gpuhub_nbgrader.ExchangeSubmit"
c.ExchangeFactory.fetch_feedback = "gpuhub_nbgrader.ExchangeFetchFeedback"
c.ExchangeFactory.collect = "gpuhub_nbgrader.ExchangeCollect"
c.ExchangeFactory.release_feedback = "gpuhub_nbgrader.ExchangeReleaseFeedback"

# Instructors: the course directory is /home/jovyan/<course> (a volume shared by the course's
# instructors). Inside one of them that course is used; elsewhere (formgrader runs in your home)
# the course this server is named after (GPUHUB_SERVER_COURSE, set by the hub), else the first
# course you teach. So an instructor of several courses grades each in a server named after it.
_taught = sorted(k for k, role in _courses.items() if role == "instructor")
if _taught:
    _cwd = os.path.realpath(os.getcwd())
    _here = [k for k in _taught if _cwd == os.path.join(_home, k) or _cwd.startswith(os.path.join(_home, k) + os.sep)]
    _server = [k for k in _taught if k == os.environ.get("GPUHUB_SERVER_COURSE")]
    _course = (_here or _server or _taught)[0]
    _root = os.path.join(_home, _course)
    c.CourseDirectory.course_id = _course
    c.CourseDirectory.root = _root
    # WAL-mode gradebook on the local course volume (prepared by the hub); wait for a writer
    # instead of failing with "database is locked".
    c.CourseDirectory.db_url = "sqlite:///" + os.path.join(_root, "gradebook.db") + "?timeout=30"
