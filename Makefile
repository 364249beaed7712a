# gpuhub: the two commands are `make run` and `make test` (see README.md); `make lint` / `make fmt` for code style.
SHELL := /bin/bash
export GPUHUB_SITE_CONFIG ?= examples/site.yaml
PY := .venv/bin/python
RUFF := .venv/bin/ruff

.PHONY: run test lint fmt lint-tools setup setup-test docker images check-config bench clean-containers \
	compose-up compose-down i18n lab-extension swarm-demo swarm-down

run: setup  ## install what is missing, build images, serve the hub on http://127.0.0.1:8000
	exec .venv/bin/gpuhub run

test: setup-test  ## install what is missing, start test services, run the whole suite
	bash scripts/test.sh

lint: lint-tools  ## import layers (lint-imports), ruff check, ruff format --check; scripts/test.sh runs this first
	.venv/bin/lint-imports --no-logo
	$(RUFF) check .
	$(RUFF) format --check .

fmt: lint-tools  ## apply ruff's fixes and formatting; then list what still needs a hand edit
	$(RUFF) check --fix --exit-zero --quiet .
	$(RUFF) format .
	$(RUFF) check .

lint-tools:
	@test -x $(RUFF) -a -x .venv/bin/lint-imports || { echo "error: .venv has no ruff or lint-imports" \
	  "(the pyproject 'test' extra); run \`make setup-test\`" >&2; exit 1; }

setup:
	bash scripts/setup.sh run

setup-test:
	bash scripts/setup.sh test

docker:
	bash scripts/docker-engine.sh

images: setup
	.venv/bin/gpuhub images build

check-config:
	.venv/bin/gpuhub check-config

bench: setup-test
	$(PY) bench/spawn.py

clean-containers:  ## remove every container gpuhub's tests or hub created
	-docker ps -aq --filter label=gpuhub.managed=1 | xargs -r docker rm -f

compose-up:  ## production stack (docker-compose.yml): build the hub image, start it; see README "Production"
	.venv/bin/gpuhub images build hub
	GPUHUB_HOST_GATEWAY=$$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}') docker-compose up -d
	docker-compose ps

compose-down:  ## stop and remove the stack's containers; volumes (database, hub state, metrics) are kept
	docker-compose down

LOCALE_DIR := gpuhub/hub/locale
i18n:  ## extract the hub's messages, update the ko/en catalogs (.po), compile them (.mo); both are committed
	.venv/bin/pybabel extract -F babel.cfg --sort-by-file --no-wrap --project gpuhub -c TRANSLATORS: \
	  -o $(LOCALE_DIR)/messages.pot .
	.venv/bin/pybabel update -i $(LOCALE_DIR)/messages.pot -d $(LOCALE_DIR) -D gpuhub --no-wrap --no-fuzzy-matching
	.venv/bin/pybabel compile -d $(LOCALE_DIR) -D gpuhub --statistics

lab-extension:  ## rebuild images/base-notebook/gpuhub-lab's JupyterLab part (npm on the host); commit the result
	bash images/base-notebook/gpuhub-lab/build.sh

swarm-demo: setup  ## local Swarm: GPUHUB_DEMO_NODES (3) DinD nodes x GPUHUB_DEMO_GPUS_PER_NODE (2) GPUs, hub in swarm mode
	bash scripts/swarm.sh demo

swarm-down:  ## remove the swarm-demo nodes, their volumes and network (by label)
	bash scripts/swarm.sh down
