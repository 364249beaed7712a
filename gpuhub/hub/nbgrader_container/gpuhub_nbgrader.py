"""gpuhub's nbgrader plugins (nbgrader 0.9): who you are comes from the hub, not /etc/passwd.

Every hub user runs as their own numeric UID, which has no passwd entry in the image, and
the exchange relies on those UIDs (see gpuhub.hub.courses). So:

- ``ExchangeSubmit`` / ``ExchangeFetchFeedback``: "me" is ``$JUPYTERHUB_USER`` (nbgrader asks
  ``pwd`` otherwise), and a submission folder is made 0750: its author and the course's
  instructors' group (inherited from ``inbound``) only; nbgrader's own 0777 relies on the name
  staying secret.
- ``ExchangeCollect``: takes a submission only if its folder belongs to the UID the hub gave
  the student it names (``<exchange>/<course>/.gpuhub/uids/<uid>``, written as root by the
  hub), so nobody can submit in someone else's name; nbgrader's own check only warns.
- ``ExchangeReleaseFeedback``: each released feedback file gets mode 0640 and a POSIX ACL
  entry ``user:<student's UID>:r``, so only that student (and the instructors) can open it,
  even knowing its name; where the file system has no ACLs it stays nbgrader's 0644 in the
  0711 folder (then its unguessable name is what protects it).
- a server extension (``gpuhub_nbgrader``, in place of nbgrader's ``course_list``) whose
  course list finds the local formgrader without fetching the server's own public URL,
  which a container cannot reach (the hub's proxy listens on the host's loopback).
- ``GpuhubAuthPlugin``: nbgrader's JupyterHub plugin (courses from the hub groups
  ``formgrade-<course>`` / ``nbgrader-<course>``); the hub derives those groups from its site
  config, so formgrader's "add student" does not try to edit hub groups.
"""

import contextlib
import errno
import glob
import os
import re
import struct

from nbgrader.api import Gradebook, MissingEntry
from nbgrader.auth.jupyterhub import JupyterHubAuthPlugin
from nbgrader.exchange.default.collect import ExchangeCollect as _Collect
from nbgrader.exchange.default.collect import groupby
from nbgrader.exchange.default.fetch_feedback import ExchangeFetchFeedback as _FetchFeedback
from nbgrader.exchange.default.release_feedback import ExchangeReleaseFeedback as _ReleaseFeedback
from nbgrader.exchange.default.submit import ExchangeSubmit as _Submit
from nbgrader.utils import notebook_hash
from traitlets import default

SUBMISSION_MODE = 0o750
UID_REGISTRY = os.path.join(".gpuhub", "uids")


def hub_user() -> str:
    return os.environ["JUPYTERHUB_USER"]


def registry(course_path: str) -> dict[int, str]:
    """{uid: hub username} of the course's members (written by the hub as root)."""
    out = {}
    folder = os.path.join(course_path, UID_REGISTRY)
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.isdigit():
            with open(os.path.join(folder, name)) as fh:
                out[int(name)] = fh.read().strip()
    return out


# POSIX ACL as the kernel stores it in the system.posix_acl_access xattr (version 2, entries
# sorted by tag): owner rw, one named user r, owning group r, mask r, others nothing.
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
_ACL_UNDEFINED_ID = 0xFFFFFFFF


def readable_only_by(path: str, uid: int) -> None:
    entries = [
        (_ACL_USER_OBJ, 6, _ACL_UNDEFINED_ID),
        (_ACL_USER, 4, uid),
        (_ACL_GROUP_OBJ, 4, _ACL_UNDEFINED_ID),
        (_ACL_MASK, 4, _ACL_UNDEFINED_ID),
        (_ACL_OTHER, 0, _ACL_UNDEFINED_ID),
    ]
    value = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)
    os.setxattr(path, "system.posix_acl_access", value)


@contextlib.contextmanager
def _student_is_me(coursedir):
    """nbgrader's "*" means the current user, which it would look up in /etc/passwd."""
    before = coursedir.student_id
    if before == "*":
        coursedir.student_id = hub_user()
    try:
        yield
    finally:
        coursedir.student_id = before


class GpuhubAuthPlugin(JupyterHubAuthPlugin):
    def add_student_to_course(self, student_id, course_id):
        self.log.info(
            "course membership comes from the hub's site config; %s is not added to %s here", student_id, course_id
        )

    def remove_student_from_course(self, student_id, course_id):
        self.log.info(
            "course membership comes from the hub's site config; %s is not removed from %s here", student_id, course_id
        )


class ExchangeSubmit(_Submit):
    def init_dest(self):
        with _student_is_me(self.coursedir):
            super().init_dest()

    def copy_files(self):
        super().copy_files()
        # author: rwx; the course's instructors (group inherited from inbound): r-x; others: nothing
        os.chmod(os.path.join(self.inbound_path, self.assignment_filename), SUBMISSION_MODE)


class ExchangeFetchFeedback(_FetchFeedback):
    def init_src(self):
        with _student_is_me(self.coursedir):
            super().init_src()


class ExchangeReleaseFeedback(_ReleaseFeedback):
    def copy_files(self):
        super().copy_files()
        uids = {name: uid for uid, name in registry(self.course_path).items()}
        regexp = re.escape(os.path.sep).join(
            [
                self.coursedir.format_path(
                    self.coursedir.feedback_directory, "(?P<student_id>.*)", self.coursedir.assignment_id, escape=True
                ),
                "(?P<notebook_id>.*).html",
            ]
        )
        for html_file in glob.glob(os.path.join(self.src_path, "*.html")):
            m = re.match(regexp, html_file)
            secret_file = os.path.join(os.path.dirname(html_file), "submission_secret.txt")
            if m is None or not os.path.isfile(secret_file):
                continue
            with open(secret_file) as fh:
                checksum = notebook_hash(secret=fh.read(), notebook_id=m.group("notebook_id"))
            released = os.path.join(self.dest_path, f"{checksum}.html")
            uid = uids.get(m.group("student_id"))
            if uid is None or not os.path.isfile(released):
                continue
            try:
                readable_only_by(released, uid)
            except OSError as e:
                if e.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                self.log.warning("No POSIX ACLs on %s; feedback stays readable by name", self.dest_path)
                return


class ExchangeCollect(_Collect):
    @default("check_owner")
    def _check_owner_default(self):
        return False  # needs passwd entries; the UID check below replaces it

    def _genuine(self, path: str) -> bool:
        claimed = os.path.basename(path).rsplit("+", 3)[0]
        uid = os.stat(path).st_uid
        try:
            with open(os.path.join(self.course_path, UID_REGISTRY, str(uid))) as fh:
                owner = fh.read().strip()
        except OSError:
            owner = None
        if owner != claimed:
            self.log.warning(
                "Skipping %s: it is named for %r but was submitted by UID %s (%s)",
                path,
                claimed,
                uid,
                owner or "not a member of this course",
            )
        return owner == claimed

    def init_src(self):
        # nbgrader 0.9's ExchangeCollect.init_src, with forged submissions left out
        if self.coursedir.course_id == "":
            self.fail("No course id specified. Re-run with --course flag.")
        self.course_path = os.path.join(self.root, self.coursedir.course_id)
        self.inbound_path = os.path.join(self.course_path, "inbound")
        if not os.path.isdir(self.inbound_path):
            self.fail(f"Course not found: {self.inbound_path}")
        if not os.access(self.inbound_path, os.R_OK | os.X_OK):
            self.fail(f"You don't have read permissions for the directory: {self.inbound_path}")
        student_id = self.coursedir.student_id if self.coursedir.student_id else "*"
        pattern = os.path.join(self.inbound_path, f"{student_id}+{self.coursedir.assignment_id}+*")
        records = []
        for path in sorted(glob.glob(pattern)):
            if self._genuine(path):
                try:
                    records.append(self._path_to_record(path))
                except Exception as e:  # a hand-made name; nbgrader would stop the whole collect
                    self.log.warning("Skipping %s: %s", path, e)
        usergroups = groupby(records, lambda item: item["username"])
        with Gradebook(self.coursedir.db_url, self.coursedir.course_id) as gb:
            try:
                self.duedate = gb.find_assignment(self.coursedir.assignment_id).duedate
            except MissingEntry:
                self.duedate = None
        if self.duedate is None or not self.before_duedate:
            self.src_records = [self._sort_by_timestamp(v)[0] for v in usergroups.values()]
        else:
            self.src_records = []
            for v in usergroups.values():
                ordered = self._sort_by_timestamp(v)
                before = [r for r in ordered if r["timestamp"] <= self.duedate]
                self.src_records.append(before[0] if before else ordered[0])


# ---------------------------------------------------------------- server extension (course list)


def taught_courses() -> list[str]:
    """The courses this user teaches, from GPUHUB_COURSES (sorted)."""
    items = (item.split(":", 1) for item in os.environ.get("GPUHUB_COURSES", "").split(",") if ":" in item)
    return sorted(course for course, role in items if role == "instructor")


def formgrader_servers() -> dict[str, str]:
    """course -> the name of the server whose formgrader grades it: the first course taught in the
    default server (""), every other one in the server named after it."""
    taught = taught_courses()
    return {course: "" if i == 0 else course for i, course in enumerate(taught)}


def _jupyter_server_extension_points():
    return [{"module": "gpuhub_nbgrader"}]


def _load_jupyter_server_extension(serverapp):
    """nbgrader's course list, except that the local formgrader is found in-process."""
    from jupyter_server.utils import url_path_join
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.server_extensions.course_list.handlers import CourseListHandler, NbGraderVersionHandler
    from tornado import gen

    class LocalCourseListHandler(CourseListHandler):
        @gen.coroutine
        def check_for_local_formgrader(self, config):
            coursedir = CourseDirectory(config=config)
            if not coursedir.course_id or "nbgrader.server_extensions.formgrader" not in extensions:
                return []
            base = self.get_base_url() + "/" + self.base_url.strip("/")
            return [{"course_id": coursedir.course_id, "url": base + "/formgrader", "kind": "local"}]

        @gen.coroutine
        def check_for_jupyterhub_formgraders(self, config):
            """The other courses this user teaches: each is graded in the server named after it."""
            if "nbgrader.server_extensions.formgrader" not in extensions:
                return []
            here = CourseDirectory(config=config).course_id
            hub_base = os.environ.get("JUPYTERHUB_BASE_URL", "/")
            user = os.environ.get("JUPYTERHUB_USER", "")
            return [
                {
                    "course_id": course,
                    "kind": "jupyterhub",
                    "url": self.get_base_url() + url_path_join(hub_base, "user", user, server, "formgrader"),
                }
                for course, server in formgrader_servers().items()
                if course != here
            ]

    extensions = serverapp.extension_manager.extensions  # the enabled ones, filled before requests come
    webapp = serverapp.web_app
    webapp.settings["assignment_dir"] = serverapp.root_dir
    base_url = webapp.settings["base_url"]
    webapp.add_handlers(
        ".*$",
        [
            (url_path_join(base_url, "formgraders"), LocalCourseListHandler),
            (url_path_join(base_url, "nbgrader_version"), NbGraderVersionHandler),
        ],
    )
    serverapp.log.info("gpuhub: nbgrader course list (local formgrader found in-process)")
