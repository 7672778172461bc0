# EVC: two commands on a fresh Debian machine, as root.
#   make demo   set up, bring up the lab fleet, run the demo scenario (run_cfg/demo.yaml) on it
#   make test   set up, run the whole test suite (unit + real lab fleet)
# Every step is idempotent: what is already there is left alone.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := docker.io docker-registry debootstrap openssh-client tar iproute2 ca-certificates \
                busybox-static openssl chromium qemu-user-static binfmt-support redis-server
DOCKERD_LOG ?= /var/log/evc-dockerd.log
DOCKERD_WAIT ?= 60

.PHONY: demo test setup system-packages binfmt venv docker-engine lint bench clean

# The demo itself is a run-config: run_cfg/demo.yaml (trust, build, deploy, infer,
# telemetry, dashboards); `evc run run_cfg/demo.yaml --dry-run` shows its plan.
# YOLO_WEIGHTS=PATH (a YOLO .pt or .onnx) adds the yolo steps, skipped without it.
YOLO_WEIGHTS ?=
demo: setup
	$(BIN)/evc init .
	$(BIN)/evc lab up --nodes 3
	$(BIN)/evc run run_cfg/demo.yaml $(if $(YOLO_WEIGHTS),--var "yolo_weights=$(YOLO_WEIGHTS)")
	@echo
	@echo "The web console on this lab: make a token, start the server, open the URL:"
	@echo "  $(BIN)/evc token create me --role operator   (shown once: paste it at login)"
	@echo "  $(BIN)/evc serve --data-root run_cfg          (then open http://127.0.0.1:8080/)"

# The lab tests in LAB_SHARDS pytest processes, each on a lab of its own
# (tests/lab/conftest.py: EVC_TEST_SHARD and the modules of each shard), and beside
# them the unit tests, each process with its own temporary folder: the machine's CPU
# went a third idle with two lab shards (a lab's time is partly waiting on nodes).
# The first shard's report shows as it runs, the others' follow. Fails if any fails.
# (Not pytest-xdist: its --dist loadgroup does not group with pytest 9.)
LAB_SHARDS ?= 4
test: setup
	@tmp=$$(mktemp -d /tmp/evc-test.XXXXXX); jobs=""; \
	$(BIN)/python -m pytest -p no:cacheprovider --basetemp=$$tmp/unit tests/unit \
	  > $$tmp/unit.log 2>&1 & jobs="$$jobs unit:$$!"; \
	for k in $$(seq 2 $(LAB_SHARDS)); do \
	  EVC_TEST_SHARD=$$k/$(LAB_SHARDS) $(BIN)/python -m pytest -p no:cacheprovider \
	    --basetemp=$$tmp/lab$$k tests/lab > $$tmp/lab$$k.log 2>&1 & jobs="$$jobs lab$$k:$$!"; \
	done; \
	rc=0; EVC_TEST_SHARD=1/$(LAB_SHARDS) $(BIN)/python -m pytest -p no:cacheprovider \
	  --basetemp=$$tmp/lab1 tests/lab || rc=$$?; \
	said="lab shard 1 exit $$rc"; \
	for job in $$jobs; do \
	  name=$${job%%:*}; r=0; wait $${job#*:} || r=$$?; \
	  echo "---- $$name (run beside lab shard 1) ----"; cat $$tmp/$$name.log; \
	  said="$$said, $$name exit $$r"; [ $$r -eq 0 ] || rc=1; \
	done; \
	echo "$$said"; [ $$rc -eq 0 ] && rm -rf $$tmp

setup: system-packages binfmt venv docker-engine

# arm64 images (model variants, the arm64 lab node) build and run here under qemu-user:
# register its binfmt handler (F flag: the kernel keeps the interpreter open, so it works
# inside containers), mounting binfmt_misc first if nothing has.
binfmt: system-packages
	@mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
	@[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
	@grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || \
	  { echo "qemu-aarch64 binfmt is registered but disabled"; exit 1; }

system-packages:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	$(PYTHON) -c 'import ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "EVC needs Python >= 3.11; set PYTHON=/path/to/python3.11"; exit 1; }

venv: $(VENV)/.installed

# torch goes in first and pinned (constraints.txt says why), then the package with
# its dev and export extras (ultralytics, for exporting YOLO weights to ONNX).
# Byte-compiled by compileall, not pip: 15,000 of the 28,000 files are Ansible
# collections EVC never imports, and compiling them was half of the install's time;
# what is compiled must be (PYTHONDONTWRITEBYTECODE=1, set on some machines, leaves an
# uncompiled module to be compiled again by every process that imports it). A file
# that does not compile (torch ships one for Python 3.12) only stays uncompiled.
$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt torch
	$(BIN)/python -m pip install -q --no-compile -c constraints.txt -e '.[dev,export]'
	$(BIN)/python -m compileall -q -j 0 -x /ansible_collections/ \
	  "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
	  >/dev/null || true
	touch $@

# Start a Docker engine in the background if none answers; fail clearly after a bound.
docker-engine:
	@if docker info >/dev/null 2>&1; then exit 0; fi; \
	command -v dockerd >/dev/null || { echo "dockerd not found: apt-get install docker.io"; exit 1; }; \
	echo "starting dockerd in the background (log: $(DOCKERD_LOG))"; \
	setsid dockerd >$(DOCKERD_LOG) 2>&1 </dev/null & \
	for i in $$(seq $(DOCKERD_WAIT)); do docker info >/dev/null 2>&1 && exit 0; sleep 1; done; \
	echo "dockerd did not answer within $(DOCKERD_WAIT) s; last lines of $(DOCKERD_LOG):"; \
	tail -n 20 $(DOCKERD_LOG); exit 1

lint: venv
	$(BIN)/ruff check evc tests bench
	$(BIN)/ruff format --check evc tests bench

bench: setup
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/devices_scale.py
	$(BIN)/python bench/cert_push.py
	$(BIN)/python bench/model_images.py
	$(BIN)/python bench/multi_arch.py
	$(BIN)/python bench/infer_strategies.py
	$(BIN)/python bench/telemetry.py
	$(BIN)/python bench/fleet_runs.py
	$(BIN)/python bench/converge.py
	$(BIN)/python bench/remote_worker.py
	$(BIN)/python bench/module_payloads.py
	$(BIN)/python bench/lab_up.py
	$(BIN)/python bench/api.py

clean:
	-$(BIN)/evc lab down
	rm -rf $(VENV) .pytest_cache
