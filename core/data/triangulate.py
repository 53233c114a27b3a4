"""Sparse points for a dataset whose cameras are known: SIFT features and matches (pycolmap), triangulated
with the given poses and intrinsics held fixed (COLMAP's point triangulator).

Posed captures often come without points: a robot's or a phone app's transforms.json, our own generated
scenes. Points give the field its bounds from the subject (:func:`..train.bounds.subject_box`) and the
DS-NeRF depth targets (``train --depth-supervision``).

:func:`triangulate_known_poses` writes a dataset folder, as :func:`.sfm.run_sfm` does::

    DATA/transforms.json      the given dataset's keys and frames (poses and intrinsics unchanged), each
                              file_path relative to DATA, "sparse_points": "sparse_points.npz", and
                              "sfm": {"known_poses": the given file, ...}
    DATA/sparse_points.npz    as run_sfm writes it, in the given dataset's own frame
    DATA/colmap/sparse/0/     the COLMAP model of the fixed cameras and the points

The given dataset is only read; the photos stay where they are.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import NeuralLabelError
from ..geometry.cameras import OPENGL_TO_OPENCV, Intrinsics
from ..progress import ProgressFn, report
from .dataset import Frame, load_dataset, normalize_file_path, read_transforms_json, resolve_image
from .sfm import (FEATURE_SIDE, SFM_OUTPUTS, SfmResult, extract_features, match_images, publish_outputs,
                  pycolmap_version, sfm_workspace, stage_outputs)

#: nerfstudio's split lists, which name files as the frames do
SPLIT_LIST_KEYS = ("train_filenames", "val_filenames", "test_filenames")


def colmap_camera(intrinsics: Intrinsics, camera_id: int):
    """A pycolmap camera with these intrinsics (same pixel convention: the top-left pixel centre at 0.5)."""
    import pycolmap

    i = intrinsics
    k = list(i.distortion)
    if i.model == "PINHOLE":
        model, params = "PINHOLE", [i.fx, i.fy, i.cx, i.cy]
    elif i.model == "OPENCV" and (len(k) < 5 or k[4] == 0.0):
        model, params = "OPENCV", [i.fx, i.fy, i.cx, i.cy, *(k + [0.0] * 4)[:4]]
    elif i.model == "OPENCV":  # k3 as well: COLMAP's FULL_OPENCV (k1 k2 p1 p2 k3 k4 k5 k6)
        model, params = "FULL_OPENCV", [i.fx, i.fy, i.cx, i.cy, *k[:5], 0.0, 0.0, 0.0]
    else:
        model, params = "OPENCV_FISHEYE", [i.fx, i.fy, i.cx, i.cy, *(k + [0.0] * 4)[:4]]
    return pycolmap.Camera(camera_id=camera_id, model=model, width=i.width, height=i.height,
                           params=np.asarray(params, dtype=np.float64))


def colmap_cam_from_world(cam_to_data: np.ndarray) -> np.ndarray:
    """COLMAP's 3x4 world-to-camera (OpenCV axes) of an OpenGL camera-to-data pose."""
    return (OPENGL_TO_OPENCV @ np.linalg.inv(cam_to_data))[:3, :]


def triangulate_known_poses(images_dir: str | Path, out_dir: str | Path, known_poses: str | Path, *,
                            downscale: Optional[float] = None, matcher: str = "auto", num_threads: int = -1,
                            progress: Optional[ProgressFn] = None) -> SfmResult:
    """Sparse points for the dataset ``known_poses`` (transforms.json or its folder) from its photos in
    ``images_dir``, written with its frames as the dataset folder ``out_dir``.

    Every frame with a photo takes part; frames whose photo is missing stay listed (so frame indices and
    splits stay the given dataset's) and are named in ``unregistered``. ``num_registered`` counts the images
    that observe a point. Raises :class:`NeuralLabelError` (field ``known_poses``) for a dataset that is not
    a transforms.json, or whose photos lie outside ``images_dir``; (field ``images``) when fewer than two
    photos are there or no point could be triangulated."""
    import pycolmap

    started = time.monotonic()
    # absolute, links kept: a dataset's photos are often links into another folder
    images_dir = Path(os.path.abspath(images_dir))
    out_dir = Path(out_dir).resolve()
    if downscale is not None and not (np.isfinite(downscale) and downscale >= 1.0):
        raise NeuralLabelError(f"downscale must be a number >= 1 (got {downscale})", field="downscale")
    if matcher not in ("auto", "exhaustive", "sequential"):
        raise NeuralLabelError(f"matcher must be auto, exhaustive or sequential (got {matcher!r})",
                               field="matcher")
    try:
        dataset = load_dataset(known_poses)
    except NeuralLabelError as exc:
        exc.field = exc.field or "known_poses"
        raise
    if dataset.form == "colmap":
        raise NeuralLabelError(f"{dataset.path}: a COLMAP model has its points already; known poses come from a "
                               "transforms.json", field="known_poses")
    frames = dataset.frames
    names = [_name_in(images_dir, f, dataset.path) for f in frames]
    if len(frames) < 2:
        raise NeuralLabelError(f"{images_dir}: {len(frames)} of the dataset's photos are there; triangulation "
                               "needs at least two", field="images")
    max_side = max(max(f.source_size or (f.intrinsics.width, f.intrinsics.height)) for f in frames)
    if downscale is None:
        downscale = max(1.0, max_side / FEATURE_SIDE)
    with sfm_workspace(images_dir, out_dir, names) as work:
        database = work / "database.db"
        # each image its own camera, set to its frame's intrinsics below
        extract_features(pycolmap, database, images_dir, names, "per_image", None, int(round(max_side / downscale)),
                         num_threads, progress)
        match_images(pycolmap, database, len(names), matcher, num_threads, progress)
        report(progress, 0, 1, "sfm: triangulating")
        known = _posed_reconstruction(pycolmap, database, dict(zip(names, frames)))
        model = pycolmap.triangulate_points(known, database, images_dir, work / "triangulated")
        report(progress, 1, 1, "sfm: triangulating")
        if model.num_points3D() == 0:
            raise NeuralLabelError(f"{images_dir}: no point could be triangulated from the photos' matches with the "
                                   f"given poses (do the poses belong to these photos?)", field="images")
        report(progress, 0, 1, "sfm: writing")
        _write_outputs(model, dataset, frames, names, out_dir, work / "out", downscale, Path(known_poses))
        publish_outputs(work / "out", out_dir, list(SFM_OUTPUTS))
        report(progress, 1, 1, "sfm: writing")
    observed = {el.image_id for p in model.points3D.values() for el in p.track.elements}
    models = {f.intrinsics for f in frames}
    return SfmResult(out_dir=out_dir, transforms_path=out_dir / "transforms.json", num_images=len(frames),
                     num_registered=len(observed), num_points=model.num_points3D(),
                     mean_reprojection_error_px=float(model.compute_mean_reprojection_error()),
                     camera_model=frames[0].intrinsics.model, num_cameras=len(models),
                     seconds=time.monotonic() - started, unregistered=list(dataset.skipped), check=None)


def _name_in(images_dir: Path, frame: Frame, source: Path) -> str:
    """The frame's photo relative to ``images_dir`` (COLMAP's image name)."""
    path = Path(os.path.abspath(frame.image_path))
    try:
        return path.relative_to(images_dir).as_posix()
    except ValueError:
        raise NeuralLabelError(f"{source}: frame {frame.index}'s photo {path} is not inside {images_dir}; give "
                               "the folder that holds the dataset's photos", field="known_poses") from None


def _posed_reconstruction(pycolmap, database: Path, frame_of: dict[str, Frame]):
    """A reconstruction holding every database image at its frame's pose, its camera at the frame's
    intrinsics (the database's cameras are set to the same), and no points."""
    reconstruction = pycolmap.Reconstruction()
    db = pycolmap.Database.open(str(database))
    try:
        for image in sorted(db.read_all_images(), key=lambda im: im.image_id):
            frame = frame_of[image.name]
            camera = colmap_camera(frame.intrinsics, image.camera_id)
            db.update_camera(camera)
            reconstruction.add_camera_with_trivial_rig(camera)
            posed = pycolmap.Image(name=image.name, camera_id=image.camera_id, image_id=image.image_id)
            reconstruction.add_image_with_trivial_frame(
                posed, pycolmap.Rigid3d(colmap_cam_from_world(frame.cam_to_data)))
    finally:
        db.close()
    return reconstruction


def _given_transforms(dataset) -> tuple[dict, list[dict]]:
    """The given dataset's top-level keys and its frame entries in frame-index order (split files: train, val,
    test, each frame marked with its split)."""
    from .dataset import SPLITS

    if dataset.form == "transforms":
        data = copy.deepcopy(read_transforms_json(dataset.path))
        return {k: v for k, v in data.items() if k != "frames"}, data["frames"]
    top: dict = {}
    entries: list[dict] = []
    for split in SPLITS:
        path = dataset.path / f"transforms_{split}.json"
        if path.is_file():
            data = copy.deepcopy(read_transforms_json(path))
            top = top or {k: v for k, v in data.items() if k != "frames"}
            entries += [{**entry, "split": split} for entry in data["frames"]]
    return top, entries


def _write_outputs(model, dataset, frames: list[Frame], names: list[str], out_dir: Path, staging: Path,
                   downscale: float, source: Path) -> None:
    """The given dataset's keys and the entries of ``frames`` (file paths relative to ``out_dir``), the
    points and the model into ``staging``."""
    staging.mkdir(parents=True)
    top, entries = _given_transforms(dataset)
    # every entry stays, a frame whose photo is missing too, so frame indices (BOP im_id) and the held-out
    # frames stay those of the given dataset
    root = dataset.path if dataset.path.is_dir() else dataset.path.parent
    relocated = {}  # the given file_path (normalised) -> relative to the output folder
    for entry in entries:
        given = str(entry["file_path"])
        entry["file_path"] = Path(os.path.relpath(os.path.abspath(resolve_image(root, given)), out_dir)).as_posix()
        relocated[normalize_file_path(given)] = entry["file_path"]
    for key in SPLIT_LIST_KEYS:  # nerfstudio's split lists name files as the frames do
        if isinstance(top.get(key), list):
            top[key] = [relocated.get(normalize_file_path(str(n)), n) for n in top[key]]
    transforms = {**top, "frames": entries, "sparse_points": "sparse_points.npz",
                  "sfm": {"tool": "pycolmap", "version": pycolmap_version(), "known_poses": str(source.resolve()),
                          "feature_downscale": downscale}}
    image_ids = {image.name: image_id for image_id, image in model.images.items()}
    stage_outputs(staging, transforms, model, {image_ids[name]: f.index for name, f in zip(names, frames)})
