"""Build step: let the image's pip uninstall and upgrade what it installed with --user.

The image's venv includes the system site so that Python puts the user site (~/.local, the home
volume) on sys.path and pip accepts ``--user``; but inside any venv pip treats only sys.prefix as
"local", so ``pip uninstall X`` of a user package says "Not uninstalling X ... outside environment"
and ``pip install --user -U X`` writes the new version next to the old one's metadata, after which
``pip list`` reports the old version (pypa/pip#5176, open). Outside a venv pip manages the user site
as its own; this patch makes pip in this venv do the same for the user site only. It stops the
build if pip's code has changed shape (then re-check the issue and this patch).
"""

import pathlib

import pip._internal.utils.misc as misc

path = pathlib.Path(misc.__file__)
text = path.read_text()
OLD = "        return path.startswith(normalize_path(sys.prefix))\n"
NEW = "        return path.startswith(normalize_path(sys.prefix)) or _gpuhub_in_user_site(path)\n"
HELPER = '''

def _gpuhub_in_user_site(path: str) -> bool:
    """gpuhub (images/base-notebook/pip-user-site.py): the user site is this user's to manage."""
    import site

    return bool(site.ENABLE_USER_SITE) and path.startswith(normalize_path(site.getuserbase()) + os.sep)
'''
if text.count(OLD) != 1 or "def is_local(" not in text or "\nimport os\n" not in text:
    raise SystemExit(f"{path}: pip's is_local() is not the one this patch knows; see {__file__}")
path.write_text(text.replace(OLD, NEW) + HELPER)
print(f"patched {path}")
