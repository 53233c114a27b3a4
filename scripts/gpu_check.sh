#!/bin/bash
# The one GPU check, for a bare GPU machine (Python 3.12 with CUDA torch, numpy, scipy, opencv, pillow, rich,
# ninja, pytest; no network), in one call (about 7 minutes with the bench part; give it timeout_s 560):
#     make gpu-wheels                      # here, first: the missing wheels into .whl/ (ignored; carry it)
#     bash scripts/gpu_check.sh "$OUT"     # there
# With a generated scene carried along (`make gpu-scene` here puts what the bench reads of the seed-21 tabletop
# into the ignored .gpu_scene/; carry [".whl", ".gpu_scene"]):
#     GPU_CHECK_SCENE=.gpu_scene/tabletop_s21_full bash scripts/gpu_check.sh "$OUT"
# Parts: env (nvidia-smi, versions, bpy-free import), kernels (nerfacc's JIT build, tarred into
# OUT/nerfacc_build.tgz: put it at .whl/nerfacc_build.tgz and a later call skips the build), tests (the
# CUDA tests), bench_field (scripts/bench_field.py on a carried generated scene, where GPU_CHECK_SCENE names one:
# 1,000 steps at the CPU's batch sizes with nerfacc's and with the pure-torch marcher, then the 2-minute target
# unless GPU_CHECK_BENCH_MINUTES=0),
# field (a short training + render benchmark; GPU_CHECK_TRAIN_S seconds, default 45), bake (a bake of that field). Each part writes
# OUT/<part>.json (and OUT/<part>.log), runs under `timeout`, and a failing part does not stop the later ones.
# GPU_CHECK_DRY=1 runs the same parts on the CPU with tiny sizes and the current PYTHONPATH / $PYTHON
# (tests/test_gpu_prep.py does).
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
DRY=${GPU_CHECK_DRY:-0}
if [ "$DRY" = 1 ]; then
  PY=${PYTHON:-python3}; DEVICE=cpu; VIEWS=6; SIZE="48 36"; STEPS=3; TRAIN_S=0; BAKE_FRAMES=8; BAKE_SIZE="64 48"; SHARDS=2; SHARD_WINDOW=40; T_BUILD=60; T_TESTS=120; T_FIELD=120; T_BAKE=120
  BENCH_MIN=0.05; BENCH_STEPS=3; T_BENCH=600
  export TORCH_EXTENSIONS_DIR=$OUT/torch_extensions
else
  PY=python3; DEVICE=cuda; VIEWS=60; SIZE="400 300"; STEPS=0; TRAIN_S=${GPU_CHECK_TRAIN_S:-45}; BAKE_FRAMES=1000; BAKE_SIZE="640 480"; SHARDS=8; SHARD_WINDOW=40; T_BUILD=200; T_TESTS=100; T_FIELD=100; T_BAKE=90
  export TORCH_EXTENSIONS_DIR=/tmp/torch_extensions MAX_JOBS=${MAX_JOBS:-16} TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  mkdir -p /tmp/site /tmp/nlpp && ln -sfn "$REPO" /tmp/nlpp/neurallabel
  $PY -m pip install -q --no-index --no-deps --target /tmp/site "$REPO"/.whl/*.whl > "$OUT/install.log" 2>&1 \
    || echo "wheel install failed (see install.log)"
  export PYTHONPATH=/tmp/site:/tmp/nlpp
  BENCH_MIN=${GPU_CHECK_BENCH_MINUTES:-2}; BENCH_STEPS=1000  # GPU_CHECK_BENCH_MINUTES=0: no timed training
  T_BENCH=$(( ${BENCH_MIN%.*} * 60 + ${GPU_CHECK_BENCH_EXTRA_S:-240} ))
  if [ -f "$REPO/.whl/nerfacc_build.tgz" ]; then mkdir -p "$TORCH_EXTENSIONS_DIR" && tar -xzmf "$REPO/.whl/nerfacc_build.tgz" -C "$TORCH_EXTENSIONS_DIR"; fi  # -m: newer than the sources just installed, or ninja rebuilds
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
  if [ -d "$TORCH_EXTENSIONS_DIR" ] && [ ! -f "$REPO/.whl/nerfacc_build.tgz" ]; then
    tar -czf "$OUT/nerfacc_build.tgz" -C "$TORCH_EXTENSIONS_DIR" .
  fi
}

# --- tests: the CUDA tests (skipped on the CPU) ------------------------------------------------------------------
tests_part() {
  (cd "$REPO" && $PY -m pytest -q -p no:cacheprovider -rfEs tests/test_gpu_prep.py tests/test_render.py \
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

# --- bench: scripts/bench_field.py on a generated scene carried along (GPU_CHECK_SCENE, a make_scene.py folder
# relative to the repository; its test views' gt/depth and gt/instance suffice), the targets' 2-minute training --
# Then the same scene for 1,000 steps at the CPU's batch sizes (the CPU's own such run is in the closing notes), and
# the 2-minute field evaluated through the CPU renderer too: together they tell a CUDA training problem from a
# batch-size or a rendering one. Both land in bench_field.json.
bench_part() {
  local common=(--families "" --scene "bench=$GPU_CHECK_SCENE" --device "$GPU_CHECK_DEVICE" --skip-fox)
  local steps=(--steps "$BENCH_STEPS" --batch cpu)
  # the depth gap: nerfacc's marcher (the field also evaluated by the CPU renderer), then the pure-torch one
  (cd "$REPO" && $PY scripts/bench_field.py "${common[@]}" "${steps[@]}" --evaluate-on-cpu \
     --work "$WORK/bench_steps") > "$WORK/bench_steps.json"
  (cd "$REPO" && $PY scripts/bench_field.py "${common[@]}" "${steps[@]}" --marcher torch \
     --work "$WORK/bench_torch") > "$WORK/bench_torch.json"
  if [ "$BENCH_MIN" != 0 ]; then  # the 2-minute target
    (cd "$REPO" && $PY scripts/bench_field.py "${common[@]}" --minutes "$BENCH_MIN" --evaluate-on-cpu \
       --work "$WORK/bench") > "$WORK/bench_timed.json"
  fi
  $PY - "$WORK" > "$OUT/bench_field.json" <<'EOF'
import json, sys
from pathlib import Path
result = {"part": "bench_field"}
for name in ("bench_steps", "bench_torch", "bench_timed"):
    try:
        result[name] = json.loads((Path(sys.argv[1]) / f"{name}.json").read_text())
    except (OSError, ValueError) as error:
        result[name] = {"error": str(error)}
result["ok"] = "error" not in result["bench_steps"]
print(json.dumps(result))
EOF
}

# --- field: a timed training (the 2-minute target) and render speeds on a bpy-free 400x300 scene -------------------
field_part() {
  $PY - $VIEWS $SIZE $STEPS $TRAIN_S <<'EOF'
import json, os, sys, time
from pathlib import Path
import numpy as np
import torch
from PIL import Image
sys.path.insert(0, os.path.join(os.environ["GPU_CHECK_REPO"], "tests"))
from test_gpu_prep import write_orbit_scene
from neurallabel.core.data.dataset import load_dataset
from neurallabel.core.field.model import load_field
from neurallabel.core.render.views import render_frame, render_rays
from neurallabel.core.train.loop import TrainOptions, train_field
out, device = Path(os.environ["GPU_CHECK_OUT"]), os.environ["GPU_CHECK_DEVICE"]
work = Path(os.environ["GPU_CHECK_WORK"])  # the field and scene stay off OUT (too big to bring back)
views, width, height, steps = map(int, sys.argv[1:5])
train_s = float(sys.argv[5])
scene = write_orbit_scene(work / "scene", views, width, height)
options = TrainOptions(steps=steps, device=device, checkpoint_every_s=1e9) if steps else \
    TrainOptions(minutes=train_s / 60, device=device, checkpoint_every_s=1e9)
start = time.perf_counter()
result = train_field(scene, work / "field.pt", options)
train_wall_s = time.perf_counter() - start
field = load_field(work / "field.pt", device=device)
tests = load_dataset(scene).split("test")
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
render_frame(field, tests[0].intrinsics, tests[0].cam_to_data)  # warm-up
psnrs, frame_s = [], []
for frame in tests:
    sync(); start = time.perf_counter()
    image = render_frame(field, frame.intrinsics, frame.cam_to_data)
    sync(); frame_s.append(time.perf_counter() - start)
    truth = np.asarray(Image.open(frame.image_path), dtype=np.float32)[..., :3] / 255
    psnrs.append(float(-10 * np.log10(max(np.mean((image["rgb"] - truth) ** 2), 1e-10))))
g = torch.Generator().manual_seed(0)
count = (1 << 22) if device == "cuda" else 4096
eye = torch.tensor(tests[0].cam_to_data[:3, 3], dtype=torch.float32)
directions = torch.randn(count, 3, generator=g) * 0.2 - eye
directions = (directions / directions.norm(dim=-1, keepdim=True)).to(device)
origins = eye.expand(count, 3).to(device).contiguous()
render_rays(field, origins[:4096], directions[:4096], depth_only=True)  # warm-up
sync(); start = time.perf_counter()
render_rays(field, origins, directions, depth_only=True, chunk=1 << 20)
sync(); depth_s = time.perf_counter() - start
info = {"part": "field", "ok": bool(np.isfinite(result.final_loss)), "device": device, "marcher": result.marcher,
        "marcher_notice": result.marcher_notice, "steps": result.steps, "train_wall_s": round(train_wall_s, 2),
        "train_elapsed_s": round(result.elapsed_s, 2),
        "steps_per_s": round(result.steps / max(result.elapsed_s, 1e-9), 2), "final_loss": result.final_loss,
        "train_psnr": result.train_psnr, "test_psnr_mean": round(float(np.mean(psnrs)), 2),
        "test_psnr_worst": round(min(psnrs), 2), "test_views": len(psnrs),
        "frame_render_s_median": round(float(np.median(frame_s)), 4), "frame_pixels": width * height,
        "depth_rays": count, "depth_rays_per_s": round(count / depth_s), "scene": [views, width, height],
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if device == "cuda" else None}
(out / "field.json").write_text(json.dumps(info))
print(json.dumps(info))
EOF
}

# --- bake: that field over many frames with one mesh object, every format. The rate comes from the progress
# callback and is kept in bake.json as it goes, so a bake cut off by its time limit still reports it ----------------
bake_part() {
  $PY - $BAKE_FRAMES $BAKE_SIZE $SHARDS $SHARD_WINDOW <<'EOF'
import json, os, sys, time
from pathlib import Path
import numpy as np
import torch
import trimesh
sys.path.insert(0, os.path.join(os.environ["GPU_CHECK_REPO"], "tests"))
from test_gpu_prep import write_orbit_scene
from neurallabel.core.app.jobs import BakeRequest, run
from neurallabel.core.synth.poses import look_at
out, device = Path(os.environ["GPU_CHECK_OUT"]), os.environ["GPU_CHECK_DEVICE"]
work = Path(os.environ["GPU_CHECK_WORK"])
count, width, height, shards, window = map(int, sys.argv[1:6])
# the bake reads poses and intrinsics, not pixels: one photo, linked under every frame's name
photo = write_orbit_scene(work / "photo", 1, width, height) / "images" / "000000.png"
(work / "big" / "images").mkdir(parents=True, exist_ok=True)
frames = []
for n in range(count):
    angle = 2 * np.pi * n / count
    pose = look_at(np.array([2.6 * np.cos(angle), 2.6 * np.sin(angle), 1.2 + 0.5 * np.sin(7 * angle)]), np.zeros(3))
    (work / "big" / "images" / f"{n:06d}.png").symlink_to(photo)
    frames.append({"file_path": f"images/{n:06d}.png", "transform_matrix": pose.tolist()})
focal = 0.9 * width
(work / "big" / "transforms.json").write_text(json.dumps({
    "camera_model": "PINHOLE", "w": width, "h": height, "fl_x": focal, "fl_y": focal, "cx": width / 2,
    "cy": height / 2, "frames": frames}))
trimesh.creation.icosphere(subdivisions=4, radius=0.5).export(work / "ball.ply")  # the scene's ball
# the field was trained on the 400x300 scene: the bake's dataset check would refuse it for these frames, so the
# copy it bakes with records no dataset (as a hand-made checkpoint)
payload = torch.load(work / "field.pt", map_location="cpu", weights_only=True)
payload["dataset"] = {}
torch.save(payload, work / "field_any.pt")
spec = {"neurallabel_spec": 1, "data": str(work / "big" / "transforms.json"), "field": str(work / "field_any.pt"),
        "world_from_data": np.eye(4).tolist(), "units_to_mm": 1000.0, "frames": None,
        "objects": [{"name": "ball_1", "category": "ball", "category_id": 1, "instance_id": 1, "kind": "mesh",
                     "pose": np.eye(4).tolist(), "mesh": str(work / "ball.ply"), "transparent": False}]}
(work / "spec.json").write_text(json.dumps(spec))
info = {"part": "bake", "ok": False, "device": device, "size": [width, height], "frames": count, "shards": shards}
# one process: a profiled bake of the first frames (where a frame's time goes; main thread, the writer thread
# overlaps it), timed on its own
import cProfile, io, pstats, subprocess
single = min(count, 20)
profiler = cProfile.Profile()
start = time.perf_counter()
profiler.enable()
run(BakeRequest(spec=work / "spec.json", out=work / "bake_single", device=device, frames=f"0:{single}"))
profiler.disable()
single_s = time.perf_counter() - start
text = io.StringIO()
pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
(out / "bake_profile.txt").write_text(text.getvalue())
info.update(single_frames=single, single_s=round(single_s, 2), single_frames_per_s=round(single / single_s, 2))
(out / "bake.json").write_text(json.dumps(info))
# one GPU with its host's cores: `shards` concurrent `bake --shard i/N --no-assemble` processes (the Slurm
# recipe's pieces) over every frame for `window` seconds; the rate counts the frames they finished
fragments = work / "bake" / ".neurallabel" / "frames"
command = [sys.executable, "-c", "import sys; from neurallabel.core.app.cli import main; sys.exit(main())", "bake",
           str(work / "spec.json"), "--out", str(work / "bake"), "--device", device, "--no-assemble"]
start = time.perf_counter()
procs = [subprocess.Popen(command + ["--shard", f"{i}/{shards}"], stdout=subprocess.DEVNULL,
                          stderr=open(work / f"shard{i}.log", "w")) for i in range(shards)]
marks = []
while time.perf_counter() - start < window and any(p.poll() is None for p in procs):
    time.sleep(2.0)
    marks.append((time.perf_counter() - start, len(list(fragments.glob("*.json"))) if fragments.is_dir() else 0))
for p in procs:
    p.kill()
finished = marks[-1][1] if marks else 0
steady = [m for m in marks if m[1] > 0]
rate = (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0]) if len(steady) > 1 and steady[-1][0] > steady[0][0] else None
info.update(ok=finished > 0, shard_window_s=round(marks[-1][0], 1) if marks else 0, shard_frames_done=finished,
            shard_frames_per_s_steady=round(rate, 2) if rate else None, shard_returncodes=[p.poll() for p in procs],
            shard_log_tail=(work / "shard0.log").read_text()[-600:])
(out / "bake.json").write_text(json.dumps(info))
print(json.dumps(info))
EOF
}

export DRY PY OUT REPO TORCH_EXTENSIONS_DIR VIEWS SIZE STEPS TRAIN_S BAKE_FRAMES BAKE_SIZE SHARDS SHARD_WINDOW BENCH_MIN BENCH_STEPS WORK
export -f env_part kernels_part tests_part bench_part field_part bake_part
part env 60 env_part
part kernels "$T_BUILD" kernels_part
if [ "$DRY" != 1 ] && ! grep -q '"marcher": "nerfacc"' "$OUT/kernels.json"; then
  echo "no nerfacc kernels: the later parts march in torch"
  rm -rf "$TORCH_EXTENSIONS_DIR"; export PATH=$(echo "$PATH" | tr : '\n' | grep -v cuda | paste -sd:)
fi
part tests "$T_TESTS" tests_part
if [ -n "${GPU_CHECK_SCENE:-}" ]; then part bench_field "$T_BENCH" bench_part; fi
part field "$T_FIELD" field_part
part bake "$T_BAKE" bake_part
ls -la "$OUT"
# what comes back from the GPU machine is at most 8 files: the JSONs, the kernel build, and the logs in one archive
(cd "$OUT" && tar -czf logs.tgz --remove-files ./*.log ./*.txt 2>/dev/null)
exit 0
