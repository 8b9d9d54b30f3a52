# The two commands of the README: `make demo` (set up and run the main job) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test setup bench bench-scale bench-mount bench-journal bench-image

$(BIN)/strongroom: pyproject.toml scripts/system-packages.sh
	bash scripts/system-packages.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# Byte-compiled here because an environment with PYTHONDONTWRITEBYTECODE (this project's CI
# and dev machines have it) otherwise compiles every module again at each command's start:
# about 0.7 s of a command's 1 s start-up. Cheap when nothing changed; stale files are ignored.
setup: $(BIN)/strongroom
	$(BIN)/python -m compileall -q src > /dev/null

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/demo.sh

# System packages (FUSE 3, btrfs-progs) come from scripts/system-packages.sh in setup.
test: setup
	$(BIN)/python -m pytest -n 2 -q

# Smaller or shorter: make bench ARGS="--small 2000 --scale 0.02 --rounds 2" (bench/README.md)
bench: setup
	$(BIN)/python bench/run.py $(ARGS)

# Issue 8's scale figures (agent at 200 k and 2 M files, vault at 2 M and 20 M blob rows): bench/README.md
bench-scale: setup
	$(BIN)/python bench/scale.py

# `strongroom mount` beside `restic mount` (find, cat, 1 MiB range read, RSS): bench/README.md, Mount
bench-mount: setup
	$(BIN)/python bench/mount.py $(BENCH_MOUNT_ARGS)

# Issue 10's optimized backups (the change journal) against unoptimized ones and restic: bench/README.md
# A small corpus: make bench-journal ARGS="--small 5000 --scale 0.02"
bench-journal: setup
	$(BIN)/python bench/journal.py $(ARGS)

# Issue 12's image figures (image backup, increment after a mutation, restore, VHD export; root)
bench-image: setup
	$(BIN)/python bench/image.py
