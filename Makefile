# XMedGPT Workstation — set-up, run, test, benchmarks.
# `make run` and `make test` work from nothing on a fresh Debian machine.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SAMPLE := resources/sample/ct-demo
OUTPUT := test-output

# Debian packages: Qt runtime (offscreen + xcb), audio (PortAudio, espeak-ng, sox),
# PDF to PNG (poppler), Xvfb + xdotool + ImageMagick for scripted readings in a real window; a local PACS (Orthanc + DICOMweb plug-in) for the DICOM
# networking tests and dcmtk's getscu/movescu as the benchmark baseline.
APT_PACKAGES := libgl1 libegl1 libxkbcommon0 libxkbcommon-x11-0 libfontconfig1 libdbus-1-3 \
	libglib2.0-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0 \
	libxcb-randr0 libxcb-render-util0 libxcb-image0 xvfb libportaudio2 espeak-ng sox poppler-utils \
	xdotool imagemagick orthanc orthanc-dicomweb dcmtk

.PHONY: run test system-deps venv benchmarks installer installer-test demo-model demo-model-resume clean help

help:
	@echo "make run         set up and open the viewer on the bundled sample study"
	@echo "make test        set up and run the whole test suite"
	@echo "make benchmarks  run the speed/memory benchmarks (tables for the README)"
	@echo "make demo-model  retrain the embedded demo model from scratch (2 CPU cores, about seven and a half hours; resumable)"
	@echo "make installer   build the Linux desktop bundle (build/installer/*.tar.gz)"
	@echo "make installer-test  build, install into an empty folder and run the bundled app"

run: $(STAMP)
	$(VENV)/bin/xmedgpt view $(SAMPLE)

test: $(STAMP)
	mkdir -p $(OUTPUT)
	@echo "free disk before the tests (the suite keeps ~200 MB of temporary files at its peak):"; \
	df -h . "$${TMPDIR:-/tmp}" 2>/dev/null || true
	$(VENV)/bin/lint-imports
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest $(PYTEST_ARGS)

benchmarks: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/open_series.py
	$(PY) benchmarks/reliability.py
	$(PY) benchmarks/dictation.py
	$(PY) benchmarks/assistant.py
	$(PY) benchmarks/mpr.py
	QT_QPA_PLATFORM=offscreen $(PY) benchmarks/mpr_scroll.py
	$(PY) benchmarks/preread.py
	$(PY) benchmarks/pacs.py

DEMO_WORK ?= checkpoints/demo-recipe
# the 224-px phantom model, issue #14 run 4's two recipes on 512-px study slices (docs/demo-512-run-4-thumb.md), then
# run 5's continuation and phase 2 (docs/demo-512-run-5.md), then run 6's continuation and run 6b's phase 2
# (docs/demo-512-run-6.md), then run 7's (docs/demo-512-run-7.md), then run 9's moved slices and run 9b's gentler
# phase 2 (docs/demo-512-run-9.md), then runs 17-18's dense tower, run 22 and run 27 (the committed model,
# training/launch/demo_model_run27.sh, docs/demo-512-run-27.md); each step resumes where it stopped
DEMO_224 = checkpoints/demo-224
DEMO_RUN4 = checkpoints/demo-512-run4
DEMO_512 = training.demo_model --config training/configs/demo_model_512_thumb.yaml --set init_from=$(DEMO_224) --stop-after sft -v
DEMO_512_PHASE2 = training.demo_model --config training/configs/demo_model_512_thumb_phase2.yaml --out $(DEMO_RUN4) -v
DEMO_RUN5 = training.demo_model --config training/configs/demo_model_512_run5.yaml --set init_from=$(DEMO_RUN4) --stop-after sft -v
DEMO_RUN5_PHASE2 = training.demo_model --config training/configs/demo_model_512_run5_phase2.yaml --out $(DEMO_RUN5_OUT) -v
DEMO_RUN5_OUT = checkpoints/demo-512-run5-phase2
DEMO_RUN6 = training.demo_model --config training/configs/demo_model_512_run6.yaml --set init_from=$(DEMO_RUN5_OUT) --stop-after sft -v
DEMO_RUN6_PHASE2 = training.demo_model --config training/configs/demo_model_512_run6b_phase2.yaml --out $(DEMO_RUN6_OUT) -v
DEMO_RUN6_OUT = checkpoints/demo-512-run6b-phase2
DEMO_RUN7 = training.demo_model --config training/configs/demo_model_512_run7.yaml --set init_from=$(DEMO_RUN6_OUT) --stop-after sft -v
DEMO_RUN7_PHASE2 = training.demo_model --config training/configs/demo_model_512_run7_phase2.yaml --out $(DEMO_RUN7_OUT) -v
DEMO_RUN7_OUT = checkpoints/demo-512-run7-phase2
DEMO_RUN9 = training.demo_model --config training/configs/demo_model_512_run9.yaml --set init_from=$(DEMO_RUN7_OUT) --stop-after sft -v
DEMO_RUN9_PHASE2 ?= training/configs/demo_model_512_run9b_phase2.yaml
DEMO_RUN9B_OUT = checkpoints/demo-512-run9b
DEMO_STEPS = $(PY) -m training.demo_model --config training/configs/demo_model.yaml --work-dir $(DEMO_WORK) --out $(DEMO_224) -v \
	&& $(PY) -m $(DEMO_512) && $(PY) -m $(DEMO_512_PHASE2) && $(PY) -m $(DEMO_RUN5) && $(PY) -m $(DEMO_RUN5_PHASE2) \
	&& $(PY) -m $(DEMO_RUN6) && $(PY) -m $(DEMO_RUN6_PHASE2) \
	&& $(PY) -m $(DEMO_RUN7) && $(PY) -m $(DEMO_RUN7_PHASE2) \
	&& $(PY) -m $(DEMO_RUN9) && $(PY) -m training.demo_model --config $(DEMO_RUN9_PHASE2) --out $(DEMO_RUN9B_OUT) -v \
	&& PY=$(PY) bash training/launch/demo_model_run27.sh $(DEMO_RUN9B_OUT) resources/models/demo

demo-model: $(STAMP)
	rm -rf $(DEMO_WORK) $(DEMO_224) $(DEMO_RUN4) checkpoints/demo-recipe-512-thumb checkpoints/demo-recipe-512-thumb-phase2 \
		checkpoints/demo-recipe-512-run5 checkpoints/demo-recipe-512-run5-phase2 checkpoints/demo-recipe-512-run5b-phase2 \
		$(DEMO_RUN5_OUT) checkpoints/demo-recipe-512-run6 checkpoints/demo-recipe-512-run6-phase2 \
		checkpoints/demo-recipe-512-run6b-phase2 $(DEMO_RUN6_OUT) checkpoints/demo-recipe-512-run7 \
		checkpoints/demo-recipe-512-run7-phase2 $(DEMO_RUN7_OUT) checkpoints/demo-recipe-512-run9 \
		checkpoints/demo-recipe-512-run9b-phase2 $(DEMO_RUN9B_OUT) checkpoints/demo-recipe-512-run17 checkpoints/run18 \
		checkpoints/run22 checkpoints/demo-recipe-512-run27
	$(DEMO_STEPS)

demo-model-resume: $(STAMP)
	$(DEMO_STEPS)

installer: $(STAMP)
	$(PIP) install -q -e ".[installer]"
	bash installer/build_linux.sh

installer-test: installer
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -m installer tests/installer $(PYTEST_ARGS)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

venv: $(STAMP)

# torch first: the CPU wheel unless an NVIDIA driver is present (then the default CUDA build).
$(STAMP): pyproject.toml
	$(MAKE) system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PIP) install -q "torch>=2.4,<=2.14.1"; \
	else \
		$(PIP) install -q torch==2.13.0; \
	fi
	$(PIP) install -q -e ".[test]"
	# openai-whisper without its triton dependency (~1 GB, GPU-only kernels)
	$(PIP) install -q --no-deps "openai-whisper==20250625"
	touch $(STAMP)

clean:
	rm -rf $(VENV) $(OUTPUT) build *.egg-info
