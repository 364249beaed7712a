# gpuhub: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
export GPUHUB_SITE_CONFIG ?= examples/site.yaml
PY := .venv/bin/python

.PHONY: run test setup setup-test docker images check-config bench clean-containers

run: setup  ## install what is missing, build images, serve the hub on http://127.0.0.1:8000
	exec .venv/bin/gpuhub run

test: setup-test  ## install what is missing, start test services, run the whole suite
	bash scripts/test.sh

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
