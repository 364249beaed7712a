#!/usr/bin/env bash
# Make sure a Docker engine answers. Installs docker.io when no daemon binary exists and starts
# dockerd only when `docker info` fails; a daemon someone else started is left alone.
source "$(dirname "$0")/lib.sh"
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null 2>&1 || apt_need docker.io
command -v docker >/dev/null 2>&1 || apt_need docker.io
step "starting dockerd (log: $GPUHUB_RUN/dockerd.log)"
# live-restore keeps user containers running across a daemon restart.
as_root sh -c "nohup dockerd --live-restore >'$GPUHUB_RUN/dockerd.log' 2>&1 & echo \$! >'$GPUHUB_RUN/dockerd.pid'"
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then note "docker engine ready"; exit 0; fi
  sleep 0.5
done
tail -20 "$GPUHUB_RUN/dockerd.log" >&2
die "dockerd did not answer within 30 s; see $GPUHUB_RUN/dockerd.log"
