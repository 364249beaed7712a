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
# apt_uri SUITE prints the first URI this host's apt sources use for SUITE (trailing / dropped): deb822
# *.sources in the parts folder first, then one-line *.list and the sources list, at the paths apt-config
# reports (APT_CONFIG is honoured). Prints nothing when no enabled `deb` source lists that suite.
apt_uri() {
  local suite="$1" f uri APT_SL APT_SP
  local one_line="^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+$suite([[:space:]].*)?$"
  eval "$(apt-config shell APT_SL Dir::Etc::sourcelist/f APT_SP Dir::Etc::sourceparts/d 2>/dev/null)"
  for f in "${APT_SP:-/etc/apt/sources.list.d/}"*.sources "${APT_SP:-/etc/apt/sources.list.d/}"*.list \
           "${APT_SL:-/etc/apt/sources.list}"; do
    [ -f "$f" ] || continue
    # deb822: blank-line separated stanzas with "Types: deb", "URIs: URI", "Suites: SUITE ...", maybe "Enabled: no"
    uri="$(awk -v s="$suite" '
      function flush() { if (found == "" && u != "" && hit && deb && !off) found = u; u = ""; hit = deb = off = 0 }
      /^[[:space:]]*$/ { flush(); next }
      /^URIs:/ { u = $2 }
      /^Types:/ { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit = 1 }
      /^Enabled:/ { if (tolower($2) == "no") off = 1 }
      END { flush(); if (found != "") print found }' "$f")"
    # one-line: "deb [opts] URI SUITE components"
    [ -n "$uri" ] || uri="$(sed -nE "s/$one_line/\2/p" "$f" | head -1)"
    if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
  done
}
# image_apt_sources SUITE MIRROR [SECURITY_MIRROR] prints the sources.list scripts/base-image.sh writes into the
# base image: the official image's suites (SUITE, SUITE-updates, SUITE-security) from the mirrors the host
# uses. Without a security mirror the file has no security line and a comment that says why.
image_apt_sources() {
  local suite="$1" mirror="$2" security="${3:-}"
  echo "# from the apt sources of the host that built this image (gpuhub scripts/base-image.sh)"
  echo "deb $mirror $suite main"
  echo "deb $mirror $suite-updates main"
  if [ -n "$security" ]; then
    echo "deb $security $suite-security main"
  else
    echo "# no $suite-security source: the building host's apt has none (set GPUHUB_DEBIAN_SECURITY_MIRROR)"
  fi
}
