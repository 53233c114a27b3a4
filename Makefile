# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
BLENDER_EXT := $(VENV)/lib/python3.11/site-packages/bpy/5.0/scripts/addons_core/bl_pkg/cli/blender_ext.py

.PHONY: venv demo test test-all extension wheel validate bench clean gpu-wheels gpu-scene

venv: $(STAMP)

# torch first and pinned: the CPU wheel lies in the local wheel folder; anything that lets pip pick
# torch by itself (nerfacc requires "torch") would download GBs of CUDA wheels.
$(STAMP): pyproject.toml requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q "numpy==1.26.4"
	$(PIP) install -q -e ".[blender,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m neurallabel.core.cli demo

test: $(STAMP)
	$(PY) -m pytest -x -q

test-all: $(STAMP)
	$(PY) -m pytest -x -q -m ""

# The extension zip, built by Blender's own tool (it validates the manifest first).
extension: $(STAMP)
	$(PY) scripts/build_extension.py --out dist

# The Python wheel (every subpackage, found by setup.py, and the scene generator the demo runs).
wheel: $(STAMP)
	$(PIP) wheel -q --no-deps --no-build-isolation -w dist .

validate: $(STAMP)
	$(PY) $(BLENDER_EXT) validate .

clean:
	rm -rf $(VENV) dist build tests/.cache .demo

# The wheels a bare GPU machine (Python 3.12, torch/numpy/scipy/opencv/pillow/rich/ninja/pytest there, no
# network) lacks, into the ignored .whl/ for scripts/gpu_check.sh; the versions are requirements.txt's.
GPU_WHEELS := nerfacc trimesh embreex pycocotools PyMCubes
# The generated scene gpu_check.sh's bench part trains on (carry .gpu_scene with .whl): GPU_SCENE=FAMILY:SEED or a
# make_scene.py folder
GPU_SCENE ?= tabletop:21
gpu-scene:
	$(PY) scripts/gpu_scene.py $(GPU_SCENE)

gpu-wheels:
	mkdir -p .whl
	for name in $(GPU_WHEELS); do \
	  pin=$$(grep -i "^$$name==" requirements.txt) || { echo "no pin for $$name in requirements.txt"; exit 1; }; \
	  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    --platform any -d .whl "$$pin" || exit 1; \
	done
	du -sh .whl
