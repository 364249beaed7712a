#!/usr/bin/env bash
# Bring a fresh machine to where `make run` / `make test` can work. Idempotent: every step
# checks first and the second run takes seconds.  Usage: scripts/setup.sh [run|test]
source "$(dirname "$0")/lib.sh"
mode="${1:-run}"
cd "$GPUHUB_ROOT"

# 1. System packages. Test-only ones (PostgreSQL, Prometheus, Chromium) only for `test`.
pkgs=(python3 python3-venv debootstrap iproute2 git nginx-light libnginx-mod-http-js)  # nginx+njs: project download filter
command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
# node may come from elsewhere (e.g. NodeSource's nodejs, which bundles npm and conflicts with Debian's npm)
command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
[ "$mode" = test ] && pkgs+=(postgresql prometheus chromium docker-compose fonts-nanum)  # nanum: Korean text in screenshots
apt_need "${pkgs[@]}"

# 2. Docker engine (started only when `docker info` fails).
bash scripts/docker-engine.sh

# 3. Python venv at .venv, reinstalled when pyproject.toml changes.
stamp=".venv/.gpuhub-installed"
want="$(sha256sum pyproject.toml | cut -c1-16)-$mode"
have="$(cat "$stamp" 2>/dev/null || true)"  # no stamp yet: install
[ "$mode" = run ] && [ "$have" = "${want%-run}-test" ] && have="$want"  # the test install covers run
if [ ! -x .venv/bin/pip ]; then  # also repairs a venv left half-made by a failed first try
  step "creating .venv"
  python3 -m venv --clear .venv
fi
if [ "$have" != "$want" ]; then
  step "installing gpuhub and its pinned dependencies into .venv (~20 s)"
  extras="nvml"; [ "$mode" = test ] && extras="test,nvml,airlock"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[${extras}]"
  echo "$want" > "$stamp"
fi

# 4. configurable-http-proxy from npm, linked into .venv/bin where the hub looks for it.
if [ ! -x .venv/bin/configurable-http-proxy ]; then
  step "installing configurable-http-proxy 5.3.0 from npm"
  npm install --silent --no-audit --no-fund --prefix .venv/node configurable-http-proxy@5.3.0 >&2
  ln -sf "$GPUHUB_ROOT/.venv/node/node_modules/.bin/configurable-http-proxy" .venv/bin/configurable-http-proxy
fi

# 4b. axe-core (npm, tests/i18n/package-lock.json) for the accessibility check of the hub's pages.
if [ "$mode" = test ] && [ ! -f tests/i18n/node_modules/axe-core/axe.min.js ]; then
  step "installing axe-core from npm into tests/i18n"
  npm ci --silent --no-audit --no-fund --prefix tests/i18n >&2
fi

# 5. Images in the site catalog (built offline; see images/README.md).
if [ "$mode" = test ]; then
  .venv/bin/gpuhub images build --missing --all
  # offline stand-ins for the registry images docker-compose names (the compose stack test starts them)
  .venv/bin/gpuhub images build --missing postgres prometheus
else
  .venv/bin/gpuhub images build --missing --catalog
fi
step "setup done ($mode)"
