# Shared helpers for gpuhub's bring-up scripts (sourced, not run).
set -euo pipefail
GPUHUB_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GPUHUB_RUN="${GPUHUB_RUN:-$GPUHUB_ROOT/.run}"
mkdir -p "$GPUHUB_RUN"
step() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
# apt_need PKG... installs the Debian packages that are not installed yet (one apt run).
apt_need() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  step "installing Debian packages: ${missing[*]}"
  if [ ! -f "$GPUHUB_RUN/apt-updated" ] || [ -n "$(find "$GPUHUB_RUN/apt-updated" -mmin +720 2>/dev/null)" ]; then
    as_root apt-get update -q >&2 && touch "$GPUHUB_RUN/apt-updated"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}
