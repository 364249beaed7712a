#!/usr/bin/env bash
# Make sure the local Docker engine has `debian:bookworm-slim` (or $GPUHUB_BASE_IMAGE).
#
# Our Dockerfiles say `FROM debian:bookworm-slim`, so the same files build in production,
# where the image is pulled from a registry. On a machine without a registry we create an
# equivalent image: debootstrap a minimal bookworm root filesystem from the Debian mirror apt
# already uses on this host, and `docker import` it under that name.
#
# Idempotent: does nothing when the image exists; the rootfs tarball is cached in
# .run/base-image/ so a re-import (e.g. after `docker image prune -a`) takes ~2 s.
# Usage: scripts/base-image.sh [--force]   (--force rebuilds the tarball and re-imports)
source "$(dirname "$0")/lib.sh"

IMAGE="${GPUHUB_BASE_IMAGE:-debian:bookworm-slim}"
SUITE=bookworm
CACHE_DIR="$GPUHUB_RUN/base-image"
TARBALL="$CACHE_DIR/$SUITE-minbase.tar"
FORCE=0
[ "${1:-}" = "--force" ] && FORCE=1

"$GPUHUB_ROOT/scripts/docker-engine.sh"

if [ "$FORCE" = 0 ] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  note "$IMAGE is present ($(docker image inspect -f '{{.Id}}' "$IMAGE" | cut -c8-19))"
  exit 0
fi

# The Debian mirror apt uses on this host (deb822 sources first, then one-line sources.list).
debian_mirror() {
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    # deb822: "URIs: http://deb.debian.org/debian" in a stanza that has "Suites: bookworm"
    uri="$(awk -v s="$SUITE" '
      /^[[:space:]]*$/ { if (u != "" && hit) { found = u; exit } u = ""; hit = 0; next }
      /^URIs:/ { u = $2 }
      /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) hit = 1 }
      END { if (found == "" && u != "" && hit) found = u; if (found != "") print found }' "$f")"
    # one-line: "deb [opts] URI bookworm main"
    [ -n "$uri" ] || uri="$(sed -nE "s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+)[[:space:]]+$SUITE[[:space:]].*/\2/p" "$f" | head -1)"
    if [ -n "$uri" ]; then echo "${uri%/}"; return 0; fi
  done
  echo "http://deb.debian.org/debian"
}

if [ "$FORCE" = 1 ] || [ ! -s "$TARBALL" ]; then
  apt_need debootstrap
  MIRROR="${GPUHUB_DEBIAN_MIRROR:-$(debian_mirror)}"
  mkdir -p "$CACHE_DIR"
  ROOTFS="$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")"
  trap 'as_root rm -rf "$ROOTFS"' EXIT
  step "debootstrap --variant=minbase $SUITE from $MIRROR (~30 s)"
  as_root debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >"$CACHE_DIR/debootstrap.log" 2>&1 \
    || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed; see $CACHE_DIR/debootstrap.log"; }
  # What the official slim image does: no apt lists, no docs/man pages, clean apt cache.
  as_root rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/*
  # debootstrap copies the host's resolv.conf/hostname; Docker provides both at run time.
  as_root sh -c ": >'$ROOTFS/etc/resolv.conf'; echo localhost >'$ROOTFS/etc/hostname'"
  # Same apt sources as the official image (deb.debian.org), whatever mirror built it.
  as_root sh -c "cat >'$ROOTFS/etc/apt/sources.list'" <<EOF
deb http://deb.debian.org/debian $SUITE main
deb http://deb.debian.org/debian $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
  step "packing the root filesystem into $TARBALL"
  as_root tar --numeric-owner -C "$ROOTFS" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  note "$(du -h "$TARBALL" | cut -f1) rootfs"
fi

step "docker import $TARBALL -> $IMAGE"
docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --message "debootstrap --variant=minbase $SUITE (gpuhub scripts/base-image.sh)" \
  "$TARBALL" "$IMAGE" >/dev/null
note "$IMAGE imported ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
