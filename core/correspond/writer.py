"""Correspondences of a dataset's view pairs on disk, readable without NeuralLabel::

    DIR/correspondences/pairs.json         options, reasons, and per pair: frame ids, images, counts, baseline
    DIR/correspondences/cameras.json       per frame id: OpenCV K, R_w2c, t_w2c, width, height, distortion
    DIR/correspondences/AAAAAA_BBBBBB.npz  uv_a, uv_b (float32, OpenCV pixels), depth_a, xyz, probability,
                                           round_trip_px, accepted, transparent, reason

Frame ids are dataset frame indices, which are BOP's ``im_id`` in a bake of the same data. Poses and ``xyz``
are in the dataset's frame (the field's). Each pair's file is written atomically and is deterministic for the
seed (the zip entries carry no time stamps), so a re-run skips finished pairs and shards written into one
folder give the same bytes as one run. ``pairs.json`` is rewritten from the pair files on disk after every
run, under a lock: the last shard to finish writes the complete one.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..geometry.projection import opencv_from_pose
from ..geometry.view import View
from ..io.atomic import json_bytes, npy_bytes, write_bytes, write_bytes_if_changed
from ..io.lock import file_lock
from ..progress import ProgressFn, report
from .distribution import DepthSource
from .pairs import pair_geometry, query_pixels
from .roundtrip import REASONS, PairCorrespondences, PairOptions, correspond_pair

FOLDER = "correspondences"
FORMAT = "neurallabel-correspondences"
VERSION = 1
ARRAYS = ("uv_a", "uv_b", "depth_a", "xyz", "probability", "round_trip_px", "accepted", "transparent", "reason")


def pair_file(a: int, b: int) -> str:
    return f"{a:06d}_{b:06d}.npz"


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (``np.load`` reads it) whose bytes depend only on the arrays: fixed entry dates."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, npy_bytes(np.asarray(value)))
    return buffer.getvalue()


def camera_entry(view: View) -> dict:
    cam_from_data = opencv_from_pose(view.cam_to_data)
    intrinsics = view.intrinsics
    return {"image": str(view.image_path) if view.image_path is not None else None, "name": view.name,
            "width": intrinsics.width, "height": intrinsics.height,
            "K": intrinsics.K_opencv.tolist(), "R_w2c": cam_from_data[:3, :3].tolist(),
            "t_w2c": cam_from_data[:3, 3].tolist(),
            "distortion": {"model": intrinsics.model, "coefficients": list(intrinsics.distortion)}}


def pair_seed(seed: int, a: int, b: int) -> int:
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, a, b]).generate_state(1)[0])


def make_pair(source: DepthSource, view_a: View, view_b: View, per_pair: Optional[int], options: PairOptions,
              seed: int, mask: Optional[np.ndarray] = None) -> PairCorrespondences:
    """One pair's correspondences: ``per_pair`` query pixels of A (inside ``mask`` when given), seeded by
    (``seed``, the two frame ids)."""
    own = pair_seed(seed, view_a.index, view_b.index)
    pixels = query_pixels(view_a.width, view_a.height, per_pair, mask=mask, seed=own)
    return correspond_pair(source, view_a, view_b, pixels, options, seed=own)


def _summary(view_a: View, view_b: View, path: Path, target: np.ndarray) -> dict:
    with np.load(path) as data:
        reason = data["reason"]
    angle, baseline_ratio = pair_geometry(view_a, view_b, target)
    return {"a": view_a.index, "b": view_b.index, "file": path.name,
            "image_a": str(view_a.image_path) if view_a.image_path else None,
            "image_b": str(view_b.image_path) if view_b.image_path else None,
            "queries": int(reason.size), "accepted": int((reason == REASONS["accepted"]).sum()),
            "reasons": {name: int((reason == code).sum()) for name, code in REASONS.items()},
            "baseline": float(np.linalg.norm(view_a.cam_to_data[:3, 3] - view_b.cam_to_data[:3, 3])),
            "baseline_ratio": baseline_ratio, "angle_deg": angle}


def write_correspondences(source: DepthSource, views: Sequence[View], pairs: Sequence[tuple[int, int]],
                          out_dir: str | Path, *, options: PairOptions, per_pair: Optional[int], seed: int,
                          target: np.ndarray, shard: Optional[tuple[int, int]] = None,
                          masks: Optional[dict[int, np.ndarray]] = None, skipped: Optional[dict] = None,
                          progress: Optional[ProgressFn] = None) -> dict:
    """Write the pairs ``pairs`` (positions in ``views``) of this ``shard`` (I, N: every N-th from the I-th)
    into ``out_dir/correspondences``; then ``cameras.json`` and ``pairs.json`` from what is on disk."""
    folder = Path(out_dir) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    mine = list(pairs) if shard is None else list(pairs)[shard[0]::shard[1]]
    made = 0
    for n, (i, j) in enumerate(mine):
        a, b = views[i], views[j]
        path = folder / pair_file(a.index, b.index)
        if not path.is_file():  # atomic writes: a file that is there is whole
            mask = None if masks is None else masks.get(a.index)
            result = make_pair(source, a, b, per_pair, options, seed, mask)
            write_bytes(path, npz_bytes({name: getattr(result, name) for name in ARRAYS}))
            made += 1
        report(progress, n + 1, len(mine), "correspond")
    with file_lock(folder / ".pairs.lock"):
        frames = sorted({views[k].index: views[k] for pair in pairs for k in pair}.items())
        write_bytes_if_changed(folder / "cameras.json", json_bytes({str(i): camera_entry(v) for i, v in frames}))
        done = [(i, j) for i, j in pairs if (folder / pair_file(views[i].index, views[j].index)).is_file()]
        listed = [_summary(views[i], views[j], folder / pair_file(views[i].index, views[j].index), target)
                  for i, j in done]
        document = {"format": FORMAT, "version": VERSION, "complete": len(done) == len(pairs),
                    "frame_ids": "dataset frame index = BOP im_id", "pixels": "OpenCV (centre of the top-left "
                    "pixel at 0, 0)", "options": asdict(options), "per_pair": per_pair, "seed": seed,
                    "reasons": REASONS, "skipped_pairs": skipped or {}, "pairs": listed}
        write_bytes_if_changed(folder / "pairs.json", json_bytes(document))
    accepted = sum(p["accepted"] for p in listed)
    queries = sum(p["queries"] for p in listed)
    return {"out": str(folder), "pairs": len(pairs), "pairs_done": len(done), "pairs_made": made,
            "pairs_skipped": len(mine) - made, "queries": queries, "accepted": accepted,
            "reasons": {name: sum(p["reasons"][name] for p in listed) for name in REASONS},
            "complete": len(done) == len(pairs)}


def load_pair(folder: str | Path, a: int, b: int) -> dict[str, np.ndarray]:
    """A pair's arrays (what the README's loader does with plain numpy)."""
    with np.load(Path(folder) / pair_file(a, b)) as data:
        return {name: data[name] for name in data.files}


def read_pairs(folder: str | Path) -> dict:
    return json.loads((Path(folder) / "pairs.json").read_text())


def bake_masks(bake_dir: str | Path, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """Frame index -> (H, W) bool: where a bake's ``raw/instance/NNNNNN.png`` labels an object."""
    from PIL import Image

    from ..errors import NeuralLabelError

    masks = {}
    for index in indices:
        path = Path(bake_dir) / "raw" / "instance" / f"{index:06d}.png"
        if not path.is_file():
            raise NeuralLabelError(f"mask_from {bake_dir}: no {path.relative_to(bake_dir)} (bake with the raw "
                                   "format, of the same data)", field="mask_from")
        with Image.open(path) as image:
            masks[index] = np.asarray(image) > 0
    return masks


def correspond_dataset(checkpoint, dataset, out_dir: str | Path, *, field_path: str | Path,
                       pairs: Optional[int] = None, per_pair: Optional[int] = 1000, mode: str = "sample",
                       round_trip_px: float = 2.0, mask_from: Optional[Path] = None,
                       shard: Optional[tuple[int, int]] = None, seed: int = 0, max_angle: float = 45.0,
                       whole_field: bool = False, progress: Optional[ProgressFn] = None) -> dict:
    """The ``correspond`` command's work on a loaded field checkpoint and the dataset it was trained on:
    views, pair choice, the output claim, then :func:`write_correspondences`."""
    from ..errors import NeuralLabelError
    from ..geometry.transforms import Similarity
    from ..io.outdir import claim_output_dir
    from .distribution import FieldDepth
    from .pairs import select_pairs

    views = []
    for frame in dataset.frames:
        if not np.all(np.isfinite(frame.cam_to_data)):
            raise NeuralLabelError(f"frame {frame.index} ({frame.name}): its pose is not finite", field="data")
        views.append(View.from_frame(frame, Similarity.identity()))
    field = checkpoint.field
    roi = np.asarray(field.config.roi_aabb, dtype=np.float64).reshape(2, 3)
    target = roi.mean(axis=0)
    # An open scene's field also holds the contracted background: keep points in its detailed box
    box = None if whole_field or field.config.levels == 1 else tuple(float(v) for v in roi.reshape(6))
    options = PairOptions(mode=mode, round_trip_px=round_trip_px, box=box)
    choice = select_pairs(views, target, pairs, max_angle_deg=max_angle, seed=seed)
    if not choice.pairs:
        raise NeuralLabelError(f"no view pair of {dataset.path} is within {max_angle:g} degrees with a large "
                               f"enough baseline (skipped: {choice.skipped})", field="data")
    masks = None if mask_from is None else bake_masks(mask_from, sorted({views[i].index for i, _ in choice.pairs}))
    manifest = {"field": str(Path(field_path).resolve()), "trained_on": checkpoint.dataset.get("fingerprint"),
                "data": str(Path(dataset.path).resolve()), "pairs": pairs, "per_pair": per_pair,
                "options": asdict(options), "seed": seed, "max_angle": max_angle,
                "mask_from": None if mask_from is None else str(Path(mask_from).resolve())}
    inputs = {"photo": [f.image_path for f in dataset.frames], "dataset file": dataset.source_paths(),
              "field": [Path(field_path)]}
    claim_output_dir(out_dir, kind="correspond", manifest=json.loads(json.dumps(manifest)), inputs=inputs,
                     reserved=(FOLDER,))
    result = write_correspondences(FieldDepth(field), views, choice.pairs, out_dir, options=options,
                                   per_pair=per_pair, seed=seed, target=target, shard=shard, masks=masks,
                                   skipped=choice.skipped, progress=progress)
    return {**result, "mode": mode, "skipped_pairs": choice.skipped}
