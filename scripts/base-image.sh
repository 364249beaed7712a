#!/usr/bin/env bash
# Make sure the local Docker engine has `debian:bookworm-slim` (or $GPUHUB_BASE_IMAGE).
#
# Our Dockerfiles say `FROM debian:bookworm-slim`, so the same files build in production,
# where the image is pulled from a registry. On a machine without a registry we create an
# equivalent image: debootstrap a minimal bookworm root filesystem from the Debian mirror apt
# already uses on this host (or $GPUHUB_DEBIAN_MIRROR), write the same mirrors into the image's
# apt sources, and `docker import` it under that name. No mirror host is built in.
#
# Idempotent: does nothing when the image exists; the rootfs tarball is cached in
# .run/base-image/ so a re-import (e.g. after `docker image prune -a`) takes ~2 s.
# Usage: scripts/base-image.sh [--force]   (--force rebuilds the tarball and re-imports)
# Environment: GPUHUB_DEBIAN_MIRROR, GPUHUB_DEBIAN_SECURITY_MIRROR override the host's sources.
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

if [ "$FORCE" = 1 ] || [ ! -s "$TARBALL" ]; then
  # The mirrors: $GPUHUB_DEBIAN_MIRROR, else the one this host's apt uses for $SUITE; no built-in default.
  MIRROR="${GPUHUB_DEBIAN_MIRROR:-$(apt_uri "$SUITE")}"
  [ -n "$MIRROR" ] || die "this host's apt sources (/etc/apt/sources.list, /etc/apt/sources.list.d/) list no \
Debian $SUITE mirror; set GPUHUB_DEBIAN_MIRROR to the URL of a Debian mirror that serves $SUITE"
  SECURITY_MIRROR="${GPUHUB_DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}"
  apt_need debootstrap
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
  image_apt_sources "$SUITE" "$MIRROR" "$SECURITY_MIRROR" | as_root sh -c "cat >'$ROOTFS/etc/apt/sources.list'"
  [ -n "$SECURITY_MIRROR" ] \
    || note "this host's apt has no $SUITE-security source, so the image gets none (set GPUHUB_DEBIAN_SECURITY_MIRROR)"
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
