# /etc/profile.d/gpuhub.sh (gpuhub single-user images): every login shell gets the image's Python.
# JupyterLab's terminal runs `bash -l`, and Debian's /etc/profile has just reset PATH to the system
# directories, so without this `python`, `pip`, `jupyter` and `nbgrader` would be "not found" there.
# Non-login shells inherit the image's ENV PATH, which has the same order. POSIX sh (dash reads it too).
VIRTUAL_ENV=/opt/gpuhub/venv
export VIRTUAL_ENV
case ":$PATH:" in
  *":$HOME/.local/bin:"*) ;;
  *) PATH="$HOME/.local/bin:$PATH" ;;  # console scripts of `pip install --user`
esac
case "$PATH" in
  "$VIRTUAL_ENV/bin:"*) ;;
  *) PATH="$VIRTUAL_ENV/bin:$PATH" ;;
esac
export PATH
