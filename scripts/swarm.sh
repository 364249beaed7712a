#!/usr/bin/env bash
# A real multi-node Docker Swarm on this machine: Docker-in-Docker nodes (images/node, gpuhub/node:latest), each
# declaring simulated GPUs as node labels (`gpuhub node register --simulate`, design in gpuhub/host/swarm.py).
#
#   scripts/swarm.sh up      build gpuhub/node if missing; start the nodes on a bridge network of their own; init
#                            the swarm on node 1 (manager), join the rest as workers; declare the GPUs; print the
#                            inventory. Idempotent: a node already up, in the swarm or declared is left as it is.
#                            What a cut-off run left is repaired: a node made again gets a fresh engine volume; a
#                            worker in another (or a dead) swarm leaves it and joins node 1's.
#   scripts/swarm.sh load IMAGE...   copy images from this host's engine onto every node whose copy differs
#                            (gpuhub images push-to-nodes: docker save | load, streamed)
#   scripts/swarm.sh env     print DOCKER_HOST=… for the manager's engine (eval "$(scripts/swarm.sh env)")
#   scripts/swarm.sh demo    up, load the site's catalog images (GPUHUB_SITE_CONFIG, default examples/site.yaml)
#                            onto the nodes, then serve the hub in swarm mode (hub.engine: swarm) in the
#                            foreground on the site's hub.bind_url (`make swarm-demo`)
#   scripts/swarm.sh down    remove the nodes, their engine volumes and the network, by label; idempotent
#
# Environment:
#   GPUHUB_DEMO_NODES (3)            nodes; node 1 is the manager
#   GPUHUB_DEMO_GPUS_PER_NODE (2)    simulated GPUs per node, GPU-sim-<hostname>-<i>
#   GPUHUB_DEMO_GPU_MODEL (H100)     their model (a gpus.models key of the site config)
#   GPUHUB_SWARM_NAME (gpuhub-swarm) prefix of the node containers, their hostnames, volumes and the network;
#                                    also the value of the gpuhub.swarm.cluster label `down` selects by
#
# What the nodes are: containers named/hostnamed NAME-1..N on the bridge NAME-net (--internal: the host forwards
# nothing between it and any other network, so nodes reach only each other and this host), labelled gpuhub.managed=1,
# gpuhub.swarm=1, gpuhub.swarm.cluster=NAME. Each node's engine keeps its state in the volume NAME-I-docker and
# answers on the unix socket $GPUHUB_RUN/swarm/NAME/node-I/docker.sock (no TCP port). The host's engine is not a
# node. Nodes run --privileged; where this host's capability bounding set lacks a capability --privileged asks
# for (runc: "unable to apply caps: operation not permitted"), they run instead with every capability the host
# has, seccomp/AppArmor unconfined and /sys writable (the entrypoint makes the cgroup mounts writable).
# Users' servers are kept apart by each node's firewall (DOCKER-USER, written at every boot of the node and by
# `up`; see firewall_node) and the nodes' dockerd runs --userland-proxy=false so that rule also meets a
# container's connection to its own node.
# Each node's dockerd runs with --no-new-privileges: Swarm services cannot ask for it (Docker 20.10's service API
# has no such field), so the node sets it on every container (gpuhub.hub.swarm_service).
# The nodes' resolv.conf names no reachable server, so a task's registry pull fails at once and the image loaded
# onto the node (`load`) is used. Swarm's IPVS load balancing does not work here (no ip_vs in this kernel): reach a
# service's tasks at their own addresses (or --endpoint-mode dnsrr), never at its virtual IP.
source "$(dirname "$0")/lib.sh"

NAME="${GPUHUB_SWARM_NAME:-gpuhub-swarm}"
NODES="${GPUHUB_DEMO_NODES:-3}"
GPUS="${GPUHUB_DEMO_GPUS_PER_NODE:-2}"
MODEL="${GPUHUB_DEMO_GPU_MODEL:-H100}"
IMAGE=gpuhub/node:latest
NET="$NAME-net"
SOCKDIR="$GPUHUB_RUN/swarm/$NAME"
GPUHUB="$GPUHUB_ROOT/.venv/bin/gpuhub"
LABELS=(--label gpuhub.managed=1 --label gpuhub.swarm=1 --label "gpuhub.swarm.cluster=$NAME")
FILTER=(--filter label=gpuhub.swarm=1 --filter "label=gpuhub.swarm.cluster=$NAME")

[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "GPUHUB_DEMO_NODES must be a whole number >= 1 (got '$NODES')"
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "GPUHUB_DEMO_GPUS_PER_NODE must be a whole number >= 0 (got '$GPUS')"

node_sock() { echo "unix://$SOCKDIR/node-$1/docker.sock"; }
on_node() { local i="$1"; shift; docker -H "$(node_sock "$i")" "$@"; }

run_flags() {
  # --privileged where the host allows it; else the same powers minus what the host's bounding set lacks
  local probe
  if probe="$(docker run --rm "${LABELS[@]}" --privileged --entrypoint true "$IMAGE" 2>&1)"; then
    echo --privileged
  else
    note "--privileged is refused here ($(grep -o 'unable to apply caps[^:]*: [a-z ]*' <<<"$probe" | head -1 \
      || echo "${probe:0:200}")); using an explicit capability set instead"
    local bnd missing=()
    bnd=$((16#$(awk '/^CapBnd/ {print $2}' /proc/self/status)))
    # capability numbers that runc's --privileged asks for (0..40) and the host does not have
    for c in $(seq 0 40); do (( (bnd >> c) & 1 )) || missing+=("$c"); done
    local names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE
      NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE
      SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL
      SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE)
    printf '%s\n' --cap-add ALL
    for c in "${missing[@]}"; do printf '%s\n' --cap-drop "${names[$c]}"; done
    printf '%s\n' --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
      --security-opt no-new-privileges=false --security-opt systempaths=unconfined
  fi
}

wait_engine() {
  local i="$1" t
  for t in $(seq 1 120); do
    on_node "$i" info >/dev/null 2>&1 && return 0
    if ! docker inspect -f '{{.State.Running}}' "$NAME-$i" 2>/dev/null | grep -q true; then
      docker logs --tail 30 "$NAME-$i" >&2 || true
      die "node $NAME-$i stopped while its engine started (logs above)"
    fi
    sleep 0.5
  done
  docker logs --tail 30 "$NAME-$i" >&2 || true
  die "the engine in $NAME-$i did not answer on $(node_sock "$i") within 60 s (logs above)"
}

# firewall_node I HUB_ADDR: users' servers apart in node I's own network namespace (published ports only from
# HUB_ADDR, no container-to-container traffic): the DOCKER-USER rules of images/node/gpuhub-node-firewall, the one
# place they are written (what they refuse and why: the comment at its top). The node's entrypoint runs the same
# script at every boot before its dockerd, reading HUB_ADDR from /run/gpuhub-node/hub-addr (written by `up` before
# the node starts), so a restarted node (docker restart, the host rebooted) is isolated again before any task
# starts on it, without `up`. Here the repository's copy is run in the node (fed on stdin), so a node
# created from an older gpuhub/node image gets the current rules too. Idempotent.
firewall_node() {
  local i="$1" hub="$2"
  docker exec -i "$NAME-$i" sh -s "$hub" <"$GPUHUB_ROOT/images/node/gpuhub-node-firewall" ||
    die "cannot write the firewall rules in node $NAME-$i (docker exec -i $NAME-$i sh -s $hub <images/node/gpuhub-node-firewall)"
}

# hub_addr: this host's address on the nodes' network (its bridge's gateway), the one address the nodes admit to
# published ports: the hub and its proxy run here.
hub_addr() {
  local a
  a="$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "$NET")"
  [[ "$a" =~ ^[0-9]+(\.[0-9]+){3}$ ]] || die "cannot tell this host's address on $NET (docker network inspect $NET: gateway '$a')"
  echo "$a"
}

swarm_state() { on_node "$1" info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unknown; }
# node $1's swarm node id as its own engine knows it (empty when it is in no swarm)
swarm_node_id() { on_node "$1" info --format '{{.Swarm.NodeID}}' 2>/dev/null || true; }
# whether node $1 is a member of node 1's swarm: the manager knows its node id (a worker's info has no cluster id)
in_manager_swarm() {
  local id
  id="$(swarm_node_id "$1")"
  [ -n "$id" ] && on_node 1 node inspect "$id" >/dev/null 2>&1
}

# the manager's entries for node $1's hostname other than its current one (left over from before a rejoin) are
# removed: they would offer the node's GPUs twice until they turn down, and `node register` by hostname is ambiguous
forget_old_entries() {
  local id old
  id="$(swarm_node_id "$1")"
  for old in $(on_node 1 node ls --filter "name=$NAME-$1" --format '{{.ID}} {{.Hostname}}' | awk -v h="$NAME-$1" '$2 == h {print $1}'); do
    [ "$old" = "$id" ] || on_node 1 node rm --force "$old" >/dev/null
  done
}

cmd_up() {
  [ -x "$GPUHUB" ] || die "$GPUHUB is missing; run \`make setup\` first"
  "$GPUHUB" images build --missing node >&2
  docker network inspect "$NET" >/dev/null 2>&1 || {
    step "network $NET (bridge, internal, nodes only)"
    docker network create --driver bridge --internal -o com.docker.network.bridge.enable_icc=true \
      "${LABELS[@]}" "$NET" >/dev/null
  }
  local flags=() i hub
  mapfile -t flags < <(run_flags)
  hub="$(hub_addr)"
  # No name server: with no registry reachable a task's image pull must fail at once (then the node's loaded image
  # is used), not after DNS timeouts (20-40 s a task through Docker's embedded DNS on an internal network).
  mkdir -p "$SOCKDIR"
  printf 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n' >"$SOCKDIR/resolv.conf"
  for i in $(seq 1 "$NODES"); do
    if ! docker inspect "$NAME-$i" >/dev/null 2>&1; then
      step "node $NAME-$i"
      mkdir -p "$SOCKDIR/node-$i"
      echo "$hub" >"$SOCKDIR/node-$i/hub-addr"  # read by the node's firewall at every boot
      # a volume of this name without its node is a dead cluster's engine state (a run cut off before `down`):
      # its swarm membership would make the join fail ("already part of a swarm"); the node starts clean
      docker volume rm -f "$NAME-$i-docker" >/dev/null 2>&1 || true
      docker volume create "${LABELS[@]}" "$NAME-$i-docker" >/dev/null
      docker run -d --init --name "$NAME-$i" --hostname "$NAME-$i" --network "$NET" "${LABELS[@]}" \
        --label "gpuhub.swarm.node=$i" "${flags[@]}" \
        -v "$NAME-$i-docker:/var/lib/docker" -v "$SOCKDIR/resolv.conf:/etc/resolv.conf:ro" \
        -v "$SOCKDIR/node-$i:/run/gpuhub-node" \
        "$IMAGE" --no-new-privileges --userland-proxy=false --dns 127.0.0.1 --bip "10.$((200 + i)).0.1/24" \
        --default-address-pool "base=10.$((100 + i)).0.0/16,size=24" >/dev/null
    elif [ "$(docker inspect -f '{{.State.Running}}' "$NAME-$i")" != true ]; then
      step "starting node $NAME-$i again"
      mkdir -p "$SOCKDIR/node-$i" && echo "$hub" >"$SOCKDIR/node-$i/hub-addr"
      docker start "$NAME-$i" >/dev/null
    fi
  done
  for i in $(seq 1 "$NODES"); do wait_engine "$i"; done

  local addr1 token
  addr1="$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$NAME-1")"
  if [ "$(swarm_state 1)" != active ]; then
    step "docker swarm init on $NAME-1 ($addr1)"
    on_node 1 swarm init --advertise-addr "$addr1" >/dev/null
  fi
  token="$(on_node 1 swarm join-token -q worker)"
  local state
  for i in $(seq 2 "$NODES"); do
    state="$(swarm_state "$i")"
    for _ in $(seq 1 20); do  # a node restarted a moment ago is 'pending' while it reaches its manager again
      [ "$state" = pending ] || break
      sleep 1 && state="$(swarm_state "$i")"
    done
    if [ "$state" = active ] && in_manager_swarm "$i"; then continue; fi
    if [ "$state" != inactive ]; then  # pending, error, locked, or a member of another swarm
      step "$NAME-$i is '$state' in another swarm than $NAME-1's: docker swarm leave --force"
      on_node "$i" swarm leave --force >/dev/null
    fi
    step "docker swarm join on $NAME-$i"
    on_node "$i" swarm join --token "$token" "$addr1:2377" >/dev/null
    forget_old_entries "$i"
  done
  step "firewall: servers apart; published ports only from the hub's host $hub (DOCKER-USER on each node)"
  for i in $(seq 1 "$NODES"); do
    echo "$hub" >"$SOCKDIR/node-$i/hub-addr"
    firewall_node "$i" "$hub"
  done
  step "declaring $GPUS simulated $MODEL GPU(s) and the engine URL of each node (gpuhub node register)"
  for i in $(seq 1 "$NODES"); do
    "$GPUHUB" node register --docker-host "$(node_sock 1)" --node "$NAME-$i" --simulate "$GPUS" --model "$MODEL" \
      --engine-url "$(node_sock "$i")" >&2
  done
  step "inventory read from the swarm (gpuhub node list --docker-host $(node_sock 1))"
  "$GPUHUB" node list --docker-host "$(node_sock 1)"
}

cmd_load() {
  # one copy of the logic: gpuhub images push-to-nodes (each node's engine from its gpuhub.engine label, which
  # `up` writes; only the images whose id differs are copied). Each node's socket is also passed explicitly, so a
  # cluster made before the label existed is served too.
  [ $# -gt 0 ] || die "name the images to copy onto the nodes: scripts/swarm.sh load IMAGE..."
  local i engines=()
  for i in $(seq 1 "$NODES"); do
    if docker inspect "$NAME-$i" >/dev/null 2>&1; then engines+=(--node-engine "$NAME-$i=$(node_sock "$i")"); fi
  done
  "$GPUHUB" images push-to-nodes --docker-host "$(node_sock 1)" "${engines[@]}" "$@"
}

cmd_down() {
  local ids
  ids="$(docker ps -aq "${FILTER[@]}")"
  if [ -n "$ids" ]; then
    step "removing the nodes of $NAME"
    # shellcheck disable=SC2086
    docker rm -f $ids >/dev/null
  fi
  ids="$(docker volume ls -q "${FILTER[@]}")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker volume rm $ids >/dev/null
  ids="$(docker network ls -q "${FILTER[@]}")"
  # shellcheck disable=SC2086
  [ -z "$ids" ] || docker network rm $ids >/dev/null
  rm -rf "$SOCKDIR"
  note "swarm $NAME is down"
}

cmd_demo() {
  # make swarm-demo: the nodes, the site's catalog on every node, and the hub in swarm mode in the foreground
  cmd_up
  local site="${GPUHUB_SITE_CONFIG:-$GPUHUB_ROOT/examples/site.yaml}" derived="$SOCKDIR/site.yaml" images
  # the site config as given, with hub.engine: swarm, its own state folder (a ledger apart from `make run`'s), and
  # no gpus.devices (the nodes' declared GPUs are the inventory)
  images="$("$GPUHUB_ROOT/.venv/bin/python" - "$site" "$derived" "$GPUHUB_ROOT/state/swarm-$NAME" <<'PY'
import sys, pathlib, yaml
src, dst, state = sys.argv[1:]
data = yaml.safe_load(pathlib.Path(src).read_text())
hub = data.setdefault("hub", {})
hub.update(engine="swarm", state_dir=state)
data.setdefault("gpus", {}).pop("devices", None)
data["gpus"]["inventory"] = "static"
pathlib.Path(dst).write_text(yaml.safe_dump(data))
print(" ".join(sorted({spec["image"] for spec in (data.get("images") or {}).values()})))
PY
)" || die "cannot read the site config $site"
  # shellcheck disable=SC2086
  cmd_load $images
  step "the hub in swarm mode (site config $derived, Docker engine: the manager $NAME-1)"
  DOCKER_HOST="$(node_sock 1)" GPUHUB_SITE_CONFIG="$derived" exec "$GPUHUB" run
}

case "${1:-}" in
  up) cmd_up ;;
  demo) cmd_demo ;;
  load) shift; cmd_load "$@" ;;
  env) echo "DOCKER_HOST=$(node_sock 1)" ;;
  down) cmd_down ;;
  *) die "usage: scripts/swarm.sh up|load IMAGE...|env|demo|down (see the comment at the top of scripts/swarm.sh)" ;;
esac
