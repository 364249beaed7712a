#!/usr/bin/env bash
# Make sure a Docker engine answers. Installs docker.io when no daemon binary exists and starts
# dockerd only when `docker info` fails; a daemon someone else started is left alone, settings and all.
#
# The engine this script starts itself (quickstart, tests) is set up as docker-bench-security's
# section 2 (CIS Docker Benchmark 1.6) asks:
#   --live-restore           user containers keep running across a daemon restart (2.15)
#   --no-new-privileges      no container gains privileges through setuid binaries (2.14; every
#                            gpuhub container sets it as well)
#   --icc=false              no traffic between containers on the default bridge (2.2; gpuhub's user
#                            network has its own icc off, see gpuhub/host/dockerenv.py)
#   --userland-proxy=false   published ports through the kernel's NAT, no docker-proxy process (2.16)
# Nothing in gpuhub needs what these take away: the hub talks to user servers from the host, user
# containers reach only the hub on their network's gateway, and the tests publish no ports.
# A setting that /etc/docker/daemon.json (GPUHUB_DOCKERD_CONFIG) already has is the operator's: that
# flag is left out (dockerd refuses to start when a flag and the file both set one).
#   scripts/docker-engine.sh --print-flags   prints the flags it would start dockerd with, and exits
source "$(dirname "$0")/lib.sh"
DOCKERD_CONFIG="${GPUHUB_DOCKERD_CONFIG:-/etc/docker/daemon.json}"

dockerd_flags() {
  local key flag
  for pair in "live-restore --live-restore" "no-new-privileges --no-new-privileges" "icc --icc=false" \
              "userland-proxy --userland-proxy=false"; do
    key="${pair%% *}" flag="${pair#* }"
    if [ -f "$DOCKERD_CONFIG" ] && grep -q "\"$key\"[[:space:]]*:" "$DOCKERD_CONFIG"; then
      note "$DOCKERD_CONFIG sets \"$key\": left as the operator has it" >&2
    else
      printf '%s\n' "$flag"
    fi
  done
}

if [ "${1:-}" = "--print-flags" ]; then dockerd_flags; exit 0; fi
if docker info >/dev/null 2>&1; then exit 0; fi
command -v dockerd >/dev/null 2>&1 || apt_need docker.io
command -v docker >/dev/null 2>&1 || apt_need docker.io
# A dockerd that is still shutting down (it stops answering before it exits) holds /var/run/docker.pid
# and its log: wait for it to go, or the new one refuses to start ("pid file found").
for _ in $(seq 1 120); do
  old="$(cat /var/run/docker.pid 2>/dev/null || true)"
  if [ -z "$old" ] || ! [ -d "/proc/$old" ]; then break; fi
  sleep 0.5
done
mapfile -t flags < <(dockerd_flags)
step "starting dockerd ${flags[*]} (log: $GPUHUB_RUN/dockerd.log)"
as_root sh -c "nohup dockerd ${flags[*]} >'$GPUHUB_RUN/dockerd.log' 2>&1 & echo \$! >'$GPUHUB_RUN/dockerd.pid'"
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then note "docker engine ready"; exit 0; fi
  sleep 0.5
done
tail -c 4000 "$GPUHUB_RUN/dockerd.log" | tr -d '\000' >&2
die "dockerd did not answer within 30 s; see $GPUHUB_RUN/dockerd.log"
