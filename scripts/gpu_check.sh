#!/bin/bash
# The one GPU check, for a bare GPU machine (Python 3.12 with CUDA torch, numpy, scipy, opencv, pillow, rich,
# ninja, pytest; no network), in one call of under 8 minutes:
#     make gpu-wheels                      # here, first: the missing wheels into .whl/ (ignored; carry it)
#     bash scripts/gpu_check.sh "$OUT"     # there
# Parts: env (nvidia-smi, versions, bpy-free import), kernels (nerfacc's JIT build, tarred into
# OUT/nerfacc_build.tgz: put it at .whl/nerfacc_build.tgz and a later call skips the build), tests (the
# CUDA tests), field (a short training + render benchmark), bake (a bake of that field). Each part writes
# OUT/<part>.json (and OUT/<part>.log), runs under `timeout`, and a failing part does not stop the later ones.
# GPU_CHECK_DRY=1 runs the same parts on the CPU with tiny sizes and the current PYTHONPATH / $PYTHON
# (tests/test_gpu_prep.py does).
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python3}; DEVICE=cpu; VIEWS=6; SIZE="48 36"; STEPS=3; T_BUILD=60; T_TESTS=120; T_FIELD=120; T_BAKE=120
  export TORCH_EXTENSIONS_DIR=$OUT/torch_extensions
else
  PY=python3; DEVICE=cuda; VIEWS=60; SIZE="320 240"; STEPS=500; T_BUILD=270; T_TESTS=100; T_FIELD=60; T_BAKE=45
  export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=${MAX_JOBS:-16}
  mkdir -p /tmp/site /tmp/nlpp && ln -sfn "$REPO" /tmp/nlpp/neurallabel
  $PY -m pip install -q --no-index --no-deps --target /tmp/site "$REPO"/.whl/*.whl > "$OUT/install.log" 2>&1 \
    || echo "wheel install failed (see install.log)"
  export PYTHONPATH=/tmp/site:/tmp/nlpp
  if [ -f "$REPO/.whl/nerfacc_build.tgz" ]; then mkdir -p "$TORCH_EXTENSIONS_DIR" && tar -xzf "$REPO/.whl/nerfacc_build.tgz" -C "$TORCH_EXTENSIONS_DIR"; fi
fi
WORK=${GPU_CHECK_WORK:-$( [ "$DRY" = 1 ] && echo "$OUT/work" || echo /tmp/gpu_check_work )}
rm -rf "$WORK" && mkdir -p "$WORK"
export GPU_CHECK_OUT=$OUT GPU_CHECK_DEVICE=$DEVICE GPU_CHECK_REPO=$REPO GPU_CHECK_WORK=$WORK
cd "$OUT"

# part NAME SECONDS FUNCTION: run FUNCTION (exported, in a child bash) under timeout; where it wrote no
# NAME.json, write its failure there
part() {
  local name=$1 limit=$2 fn=$3
  local start=$SECONDS
  timeout --kill-after=10 "$limit" bash -c "$fn" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: rc=$rc in $((SECONDS - start)) s"
  if [ ! -s "$OUT/$name.json" ]; then
    $PY - "$name" "$rc" "$OUT/$name.log" > "$OUT/$name.json" <<'EOF' || echo "{\"ok\": false, \"rc\": $rc}" > "$OUT/$name.json"
import json, sys
name, rc, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tail = open(log, errors="replace").read()[-2000:]
print(json.dumps({"part": name, "ok": False, "rc": rc, "timed_out": rc in (124, 137), "log_tail": tail}))
EOF
  fi
}

# --- env: the machine, the versions, and a bpy-free import of the project -------------------------------------
env_part() {
  if [ "$DRY" != 1 ]; then nvidia-smi; fi
  $PY - <<'EOF'
import importlib, json, os, sys
import torch
import neurallabel.core  # noqa: F401  (must not need bpy)
mods = {}
for name in ("numpy", "scipy", "cv2", "PIL", "rich", "nerfacc", "trimesh", "embreex", "pycocotools", "mcubes",
             "pycolmap"):
    try:
        mods[name] = getattr(importlib.import_module(name), "__version__", "ok")
    except Exception as error:
        mods[name] = f"missing: {type(error).__name__}: {error}"
info = {"part": "env", "ok": True, "python": sys.version.split()[0], "torch": torch.__version__,
        "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bpy_imported": "bpy" in sys.modules, "modules": mods}
open(os.path.join(os.environ["GPU_CHECK_OUT"], "env.json"), "w").write(json.dumps(info))
print(json.dumps(info))
EOF
}

# --- kernels: nerfacc's CUDA kernels, built once (JIT) and kept -------------------------------------------------
kernels_part() {
  $PY - <<'EOF'
import json, os, time
import torch
from neurallabel.core.render.march import choose_backend, nerfacc_kernels
start = time.perf_counter()
missing = nerfacc_kernels()
marcher, notice = choose_backend(os.environ["GPU_CHECK_DEVICE"])
info = {"part": "kernels", "ok": marcher == "nerfacc" or os.environ["GPU_CHECK_DEVICE"] == "cpu",
        "marcher": marcher, "missing": missing, "notice": notice, "seconds": round(time.perf_counter() - start, 1),
        "nvcc_cuda": os.popen("nvcc --version 2>/dev/null | tail -n 2").read().strip(),
        "torch_cuda": torch.version.cuda}
open(os.path.join(os.environ["GPU_CHECK_OUT"], "kernels.json"), "w").write(json.dumps(info))
print(json.dumps(info))
EOF
  if [ -d "$TORCH_EXTENSIONS_DIR" ]; then tar -czf "$OUT/nerfacc_build.tgz" -C "$TORCH_EXTENSIONS_DIR" .; fi
}

# --- tests: the CUDA tests (skipped on the CPU) ------------------------------------------------------------------
tests_part() {
  (cd "$REPO" && $PY -m pytest -q -p no:cacheprovider -rs tests/test_gpu_prep.py tests/test_render.py \
     -k "cuda or nerfacc" 2>&1) | tee "$OUT/tests.txt"
  local rc=${PIPESTATUS[0]}
  $PY - "$rc" <<'EOF'
import json, os, sys
out = os.environ["GPU_CHECK_OUT"]
lines = [l for l in open(os.path.join(out, "tests.txt")).read().splitlines() if l.strip()]
summary = next((l for l in reversed(lines) if " in " in l and ("passed" in l or "failed" in l
                or "skipped" in l or "error" in l)), lines[-1] if lines else "")
rc = int(sys.argv[1])
info = {"part": "tests", "ok": rc in (0, 5), "rc": rc, "summary": summary,
        "failures": [l for l in lines if l.startswith(("FAILED", "ERROR"))]}
open(os.path.join(out, "tests.json"), "w").write(json.dumps(info))
print(json.dumps(info))
EOF
}

# --- field: a short training and a render benchmark on a bpy-free scene ------------------------------------------
field_part() {
  $PY - $VIEWS $SIZE $STEPS <<'EOF'
import json, os, sys, time
from pathlib import Path
import numpy as np
import torch
sys.path.insert(0, os.path.join(os.environ["GPU_CHECK_REPO"], "tests"))
from test_gpu_prep import write_orbit_scene
from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.field.model import load_field
from neurallabel.core.render.views import render_frame, render_rays
from neurallabel.core.train.loop import TrainOptions, train_field
out, device = Path(os.environ["GPU_CHECK_OUT"]), os.environ["GPU_CHECK_DEVICE"]
work = Path(os.environ["GPU_CHECK_WORK"])  # the field and scene stay off OUT (too big to bring back)
views, width, height, steps = map(int, sys.argv[1:5])
scene = write_orbit_scene(work / "scene", views, width, height)
start = time.perf_counter()
result = train_field(scene, work / "field.pt", TrainOptions(steps=steps, device=device, checkpoint_every_s=1e9))
train_s = time.perf_counter() - start
field = load_field(work / "field.pt", device=device)
frame = load_dataset(scene).split("test")[0]
render_frame(field, frame.intrinsics, frame.cam_to_data)  # warm-up
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
sync(); start = time.perf_counter()
image = render_frame(field, frame.intrinsics, frame.cam_to_data)
sync(); frame_s = time.perf_counter() - start
g = torch.Generator().manual_seed(0)
origins = torch.tensor(frame.cam_to_data[:3, 3], dtype=torch.float32).expand(1 << 20 if device == "cuda" else 4096, 3)
directions = torch.randn(origins.shape[0], 3, generator=g) * 0.2 - torch.tensor(frame.cam_to_data[:3, 3], dtype=torch.float32)
directions = (directions / directions.norm(dim=-1, keepdim=True))
origins, directions = origins.to(device).contiguous(), directions.to(device)
sync(); start = time.perf_counter()
render_rays(field, origins, directions, depth_only=True, chunk=1 << 20)
sync(); depth_s = time.perf_counter() - start
truth = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(frame.image_path), dtype=np.float32)[..., :3] / 255
mse = float(np.mean((image["rgb"] - truth) ** 2))
info = {"part": "field", "ok": bool(np.isfinite(result.final_loss)), "device": device, "marcher": result.marcher,
        "marcher_notice": result.marcher_notice, "steps": result.steps, "train_s": round(train_s, 2),
        "steps_per_s": round(result.steps / max(result.elapsed_s, 1e-9), 2), "final_loss": result.final_loss,
        "train_psnr": result.train_psnr, "test_psnr": round(-10 * np.log10(max(mse, 1e-10)), 2),
        "frame_render_s": round(frame_s, 4), "frame_pixels": frame.intrinsics.width * frame.intrinsics.height,
        "depth_rays_per_s": round(origins.shape[0] / depth_s), "scene": [views, width, height],
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}
(out / "field.json").write_text(json.dumps(info))
print(json.dumps(info))
EOF
}

# --- bake: the trained field with one box object, every format ----------------------------------------------------
bake_part() {
  $PY - <<'EOF'
import json, os, time
from pathlib import Path
import numpy as np
import torch
import trimesh
from neurallabel.core.app.jobs import BakeRequest, run
out, device = Path(os.environ["GPU_CHECK_OUT"]), os.environ["GPU_CHECK_DEVICE"]
work = Path(os.environ["GPU_CHECK_WORK"])
spec = {"neurallabel_spec": 1, "data": str(work / "scene" / "transforms.json"), "field": str(work / "field.pt"),
        "world_from_data": np.eye(4).tolist(), "units_to_mm": 1000.0, "frames": None,
        "objects": [{"name": "ball_1", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "mesh",
                     "pose": np.eye(4).tolist(), "mesh": str(work / "ball.ply"), "transparent": False}]}
trimesh.creation.icosphere(subdivisions=4, radius=0.5).export(work / "ball.ply")  # the scene's ball
(work / "spec.json").write_text(json.dumps(spec))
start = time.perf_counter()
result = run(BakeRequest(spec=work / "spec.json", out=work / "bake", device=device))
seconds = time.perf_counter() - start
frames = len(json.loads((work / "scene" / "transforms.json").read_text())["frames"])
info = {"part": "bake", "ok": True, "device": device, "seconds": round(seconds, 2), "frames": frames,
        "frames_per_s": round(frames / seconds, 2), "files": sum(1 for p in (work / "bake").rglob("*") if p.is_file()),
        "result_keys": sorted(result)}
(out / "bake.json").write_text(json.dumps(info))
print(json.dumps(info))
EOF
}

export DRY PY OUT REPO TORCH_EXTENSIONS_DIR VIEWS SIZE STEPS
export -f env_part kernels_part tests_part field_part bake_part
part env 60 env_part
part kernels "$T_BUILD" kernels_part
part tests "$T_TESTS" tests_part
part field "$T_FIELD" field_part
part bake "$T_BAKE" bake_part
ls -la "$OUT"
exit 0
