"""Structure from motion: photos -> cameras + sparse points, with pycolmap (SIFT, matching, incremental mapping).

:func:`run_sfm` writes a dataset folder::

    DATA/transforms.json      OpenGL camera-to-world poses, intrinsics with lens distortion, file_path
                              relative to DATA (the photos stay where they are; nothing is copied),
                              "sparse_points": "sparse_points.npz"
    DATA/sparse_points.npz    points (P,3), colors (P,3) uint8, errors (P,) px, obs_point (M,), obs_frame (M,)
                              (frame index in transforms.json order), obs_pixel (M,2) full-resolution pixel
                              coordinates (top-left pixel centre at 0.5, 0.5: COLMAP's convention and ours),
                              frame_names (F,) the frames' file_path
    DATA/colmap/sparse/0/     the COLMAP model in the same world frame as transforms.json

The world frame is COLMAP's, made convenient: rotated so the cameras' mean up direction is +Z, centred on
the median sparse point, scaled so the median camera is 1 unit from that centre. The similarity applied is
stored as ``applied_transform`` (4x4, data_from_colmap). ``downscale`` only shrinks the images SIFT sees
(COLMAP scales keypoints back), so the cameras describe the full-resolution photos; by default they are
shrunk to FEATURE_SIDE px.

Repeated textures verify false image pairs (the fox's rose wallpaper: ~200 of 1100 verified pairs, 20-133
inliers each, mostly between the wallpaper-heavy photos 0001-0009 and the far side of the capture). Through
them the mapper can register a group of cameras in the wrong place, with a small reprojection error all the
same (the group's points are triangulated from the same wrong poses); which run does is chance (RANSAC).
So weak pairs are pruned before mapping (:func:`prune_weak_pairs`), and the model is checked against its
cameras' strongest pairs afterwards (:func:`check_reconstruction`).

DATA is claimed first (:func:`claim_sfm_dir`): sfm replaces only its own earlier output, never someone
else's transforms.json or COLMAP model. Everything is written into a temporary folder inside DATA first;
transforms.json appears last, by rename.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from ..geometry.cameras import Intrinsics
from ..geometry.transforms import apply_points
from .colmap import (cam_to_world_from_colmap,
    intrinsics_from_colmap,
    registered_images,
    sparse_points_from_reconstruction,
    transforms_camera_keys)
from .dataset import image_size
from ..errors import NeuralLabelError
from ..io.outdir import OutputClaim, claim_output_dir
from ..progress import Cancelled, ProgressFn, report

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}
MIN_REGISTERED = 3
MIN_REGISTERED_SHARE = 0.5
FEATURE_CHUNK = 8  # images per feature-extraction call, so progress moves
#: default feature image size (longer side, px): the fox's 1920 px photos at 480 px place every camera as
#: well as at full size (worst camera 0.16 % vs 0.22 % of the scene) in a quarter of the time
FEATURE_SIDE = 480
#: verified pairs weaker than this share of their images' strongest pair are dropped before mapping
#: (:func:`prune_weak_pairs`: the false pairs a repeated texture verifies)
WEAK_PAIR_FRACTION = 0.2
#: what sfm writes into its output folder, in publishing order (transforms.json last: it makes the dataset)
SFM_OUTPUTS = ("sparse_points.npz", "colmap", "transforms.json")


@dataclass
class SfmResult:
    out_dir: Path
    transforms_path: Path
    num_images: int
    num_registered: int
    num_points: int
    mean_reprojection_error_px: float
    camera_model: str
    num_cameras: int
    seconds: float
    unregistered: list[str]
    check: Optional["SfmCheck"]  # None for known poses (triangulate.py): there is no mapping to check
    remapped: bool = False  # the first model failed its self-check and was mapped again (see run_sfm)


def list_images(images_dir: Path) -> list[str]:
    """Image file names (relative to ``images_dir``, sorted) that SfM will use."""
    if not images_dir.is_dir():
        raise NeuralLabelError(f"{images_dir}: not a folder of images")
    names = sorted(p.relative_to(images_dir).as_posix() for p in images_dir.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not names:
        raise NeuralLabelError(f"{images_dir}: no images (.jpg, .png, .tif, .bmp) in this folder")
    return names


def run_sfm(images_dir: str | Path, out_dir: str | Path, *, downscale: Optional[float] = None,
            matcher: str = "auto", weak_pair_fraction: float = WEAK_PAIR_FRACTION,
            camera_model: str = "OPENCV", num_threads: int = -1, seed: int = 0,
            allow_inconsistent: bool = False, progress: Optional[ProgressFn] = None) -> SfmResult:
    """Recover cameras for the photos in ``images_dir`` and write the dataset folder ``out_dir``.

    ``downscale``: shrink the images SIFT sees by this factor; None: to FEATURE_SIDE px on the longer side
    (never enlarged). ``weak_pair_fraction``: see :func:`prune_weak_pairs` (0 keeps every verified pair).

    ``matcher``: "exhaustive", "sequential" (video-like captures), or "auto" (exhaustive up to 150 images).
    ``camera_model``: a COLMAP model; OPENCV (k1 k2 p1 p2) suits phone photos. All images of one size share
    one camera. Raises :class:`NeuralLabelError` when there are no images or the cameras do not overlap
    (fewer than 3 or under half of the images registered); then nothing is written.

    Self-check (:func:`check_reconstruction`): a model whose cameras contradict their own strongest matches
    is mapped once more without the pairs that glued those cameras in place (repeated textures verify false
    pairs); if the check still fails, :class:`NeuralLabelError` names the cameras and nothing is written,
    unless ``allow_inconsistent`` (then ``result.check`` and transforms.json's ``sfm.self_check`` say so).
    """
    import pycolmap

    started = time.monotonic()
    images_dir = Path(images_dir).resolve()
    out_dir = Path(out_dir).resolve()
    if downscale is not None and not (np.isfinite(downscale) and downscale >= 1.0):
        raise NeuralLabelError(f"downscale must be a number >= 1 (got {downscale})")
    if not 0.0 <= weak_pair_fraction < 1.0:
        raise NeuralLabelError(f"weak_pair_fraction must be in [0, 1) (got {weak_pair_fraction})")
    if matcher not in ("auto", "exhaustive", "sequential"):
        raise NeuralLabelError(f"matcher must be auto, exhaustive or sequential (got {matcher!r})")
    names = list_images(images_dir)
    sizes = {image_size(images_dir / n) for n in names}
    max_side = max(max(s) for s in sizes)
    if downscale is None:
        downscale = max(1.0, max_side / FEATURE_SIDE)
    with sfm_workspace(images_dir, out_dir, names) as work:
        database = work / "database.db"
        extract_features(pycolmap, database, images_dir, names, "single" if len(sizes) == 1 else "per_size",
                         camera_model, int(round(max_side / downscale)), num_threads, progress)
        match_images(pycolmap, database, len(names), matcher, num_threads, progress)
        if weak_pair_fraction > 0:
            prune_weak_pairs(database, weak_pair_fraction)
        reconstruction = _map(pycolmap, database, images_dir, work / "mapping", len(names), num_threads, seed,
                              progress)
        registered = registered_images(reconstruction) if reconstruction is not None else []
        if len(registered) < MIN_REGISTERED or len(registered) < MIN_REGISTERED_SHARE * len(names):
            raise NeuralLabelError(
                f"{images_dir}: the cameras do not overlap enough: SfM registered {len(registered)} of "
                f"{len(names)} images (needs at least {MIN_REGISTERED} and half); take more overlapping photos")
        epipolar_px = CHECK_EPIPOLAR_PX * downscale  # the matches' accuracy is the feature image's pixel
        report(progress, 0, 1, "sfm: checking")
        check = check_reconstruction(reconstruction, database, epipolar_px=epipolar_px)
        remapped = False
        if not check.passed:
            # The glue that placed the flagged cameras is false pairs (a repeated texture); without them the
            # cameras' true, contradicted pairs place them. Kept only if its check is better.
            drop_agreeing_pairs(reconstruction, database, set(check.flagged), epipolar_px)
            again = _map(pycolmap, database, images_dir, work / "mapping-again", len(names), num_threads, seed,
                         progress)
            again_registered = registered_images(again) if again is not None else []
            if len(again_registered) >= len(registered):
                again_check = check_reconstruction(again, database, epipolar_px=epipolar_px)
                if len(again_check.flagged) < len(check.flagged):
                    reconstruction, registered, check, remapped = again, again_registered, again_check, True
        report(progress, 1, 1, "sfm: checking")
        if not check.passed and not allow_inconsistent:
            raise NeuralLabelError(f"{images_dir}: {check.message()}; nothing written (--allow-inconsistent "
                                   f"writes the model anyway)")
        report(progress, 0, 1, "sfm: writing")
        data_from_colmap = _normalizing_similarity(reconstruction)
        reconstruction.transform(pycolmap.Sim3d(data_from_colmap[:3, :]))
        result_files = _write_outputs(reconstruction, registered, images_dir, out_dir, work / "out",
                                      data_from_colmap, downscale, {**check.summary(), "remapped": remapped})
        publish_outputs(work / "out", out_dir, result_files)
        report(progress, 1, 1, "sfm: writing")
    cameras = {im.camera_id for im in registered}
    reg_names = {im.name for im in registered}
    return SfmResult(out_dir=out_dir, transforms_path=out_dir / "transforms.json", num_images=len(names),
                     num_registered=len(registered), num_points=reconstruction.num_points3D(),
                     mean_reprojection_error_px=float(reconstruction.compute_mean_reprojection_error()),
                     camera_model=camera_model, num_cameras=len(cameras), seconds=time.monotonic() - started,
                     unregistered=[n for n in names if n not in reg_names], check=check, remapped=remapped)


def claim_sfm_dir(images_dir: Path, out_dir: Path, names: list[str]) -> OutputClaim:
    """Claim ``out_dir`` for the SfM of the photos ``names`` in ``images_dir`` (both resolved), before any SfM
    work. The folder may hold the photos (``sfm DATA/images --out DATA``) and the user's other files, which
    stay; refused (NeuralLabelError, field ``out``): a ``transforms.json``, ``colmap/`` or sparse points that
    another SfM (or anyone else) wrote, an images folder that is the output folder or lies under a name sfm
    writes, an output folder inside the images folder. A re-run for the same images replaces its own output."""
    photos = [images_dir / n for n in names]
    return claim_output_dir(out_dir, kind="sfm", manifest={"images": str(images_dir)},
                            inputs={"images folder": [images_dir], "photo": photos}, reserved=SFM_OUTPUTS,
                            allowed=[images_dir, *photos], others_stay=True)


@contextlib.contextmanager
def sfm_workspace(images_dir: Path, out_dir: Path, names: list[str]) -> Iterator[Path]:
    """Claim ``out_dir`` for the SfM of ``names`` (:func:`claim_sfm_dir`) and give a temporary work folder inside
    it, removed at the end; a run that fails leaves no trace (:func:`leave_no_trace`)."""
    created = not out_dir.exists()
    claim = claim_sfm_dir(images_dir, out_dir, names)
    finished = False
    work = None
    try:
        work = Path(tempfile.mkdtemp(prefix=".sfm-", dir=out_dir))
        yield work
        finished = True
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
        if not finished:
            leave_no_trace(claim, out_dir if created else None)


def leave_no_trace(claim: OutputClaim, created: Optional[Path]) -> None:
    """After a failed run: drop a claim this run made (a resumed one stays: its output is there) and the
    output folder if this run ``created`` it and it is empty again."""
    if not claim.resumed:
        claim.manifest_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: leave it
            claim.manifest_path.parent.rmdir()
    if created is not None and not any(created.iterdir()):
        created.rmdir()


def extract_features(pycolmap, database: Path, images_dir: Path, names: list[str], cameras: str,
                     camera_model: Optional[str], max_image_size: int, num_threads: int,
                     progress: Optional[ProgressFn]) -> None:
    """SIFT features of ``names`` into ``database``, in chunks so progress moves. ``cameras``: "single" (one
    camera for all: one image size), "per_size" (COLMAP's AUTO) or "per_image" (each image its own camera, to
    be set to known intrinsics); ``camera_model``: the COLMAP model to fit (None: COLMAP's default)."""
    reader = pycolmap.ImageReaderOptions()
    if camera_model is not None:
        reader.camera_model = camera_model
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.max_image_size = max_image_size
    extraction.num_threads = num_threads
    extraction.use_gpu = False
    mode = {"single": pycolmap.CameraMode.SINGLE, "per_size": pycolmap.CameraMode.AUTO,
            "per_image": pycolmap.CameraMode.PER_IMAGE}[cameras]
    report(progress, 0, len(names), "sfm: features")
    for start in range(0, len(names), FEATURE_CHUNK):
        chunk = names[start:start + FEATURE_CHUNK]
        pycolmap.extract_features(database, images_dir, image_names=chunk, camera_mode=mode,
                                  reader_options=reader, extraction_options=extraction,
                                  device=pycolmap.Device.cpu)
        if cameras == "single" and start == 0:
            reader.existing_camera_id = 1  # later chunks reuse the one camera the first chunk created
        report(progress, min(start + FEATURE_CHUNK, len(names)), len(names), "sfm: features")


def match_images(pycolmap, database: Path, num_images: int, matcher: str, num_threads: int,
           progress: Optional[ProgressFn]) -> None:
    options = pycolmap.FeatureMatchingOptions()
    options.num_threads = num_threads
    options.use_gpu = False
    report(progress, 0, 1, "sfm: matching")
    if matcher == "sequential" or (matcher == "auto" and num_images > 150):
        pycolmap.match_sequential(database, matching_options=options, device=pycolmap.Device.cpu)
    else:
        pycolmap.match_exhaustive(database, matching_options=options, device=pycolmap.Device.cpu)
    report(progress, 1, 1, "sfm: matching")


def _map(pycolmap, database: Path, images_dir: Path, output: Path, num_images: int, num_threads: int, seed: int,
         progress: Optional[ProgressFn]):
    """Incremental mapping; the reconstruction with the most registered images (None if there is none)."""
    output.mkdir(parents=True, exist_ok=True)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = num_threads
    options.random_seed = seed
    options.min_model_size = min(options.min_model_size, MIN_REGISTERED)
    token = pycolmap.CancellationToken()
    failure: list[BaseException] = []
    count = [0]

    def next_image() -> None:
        # Runs inside COLMAP's loop: never let an exception cross into C++; cancel and re-raise after.
        count[0] += 1
        try:
            report(progress, min(count[0], num_images), num_images, "sfm: mapping")
        except BaseException as exc:  # Cancelled, KeyboardInterrupt
            failure.append(exc)
            token.cancel()

    report(progress, 0, num_images, "sfm: mapping")
    reconstructions = pycolmap.incremental_mapping(database, images_dir, output, options,
                                                   next_image_callback=next_image, cancellation_token=token)
    if failure:
        raise failure[0]
    if token.is_cancelled:
        raise Cancelled()
    report(progress, num_images, num_images, "sfm: mapping")
    if not reconstructions:
        return None
    return max(reconstructions.values(), key=lambda r: r.num_reg_images())


def _normalizing_similarity(reconstruction) -> np.ndarray:
    """4x4 similarity data_from_colmap: mean camera up -> +Z, median point -> origin, median camera at 1."""
    images = registered_images(reconstruction)
    cam_to_world = [cam_to_world_from_colmap(im.cam_from_world().matrix()) for im in images]
    ups = np.array([c[:3, 1] for c in cam_to_world])  # OpenGL camera y = up
    up = ups.mean(axis=0)
    up = up / max(np.linalg.norm(up), 1e-12)
    rotation = _rotation_between(up, np.array([0.0, 0.0, 1.0]))
    points = np.array([p.xyz for p in reconstruction.points3D.values()]).reshape(-1, 3)
    centres = np.array([c[:3, 3] for c in cam_to_world])
    centre = np.median(points, axis=0) if len(points) else centres.mean(axis=0)
    distance = float(np.median(np.linalg.norm(centres - centre, axis=1)))
    scale = 1.0 / distance if distance > 1e-12 else 1.0
    similarity = np.eye(4)
    similarity[:3, :3] = scale * rotation
    similarity[:3, 3] = -scale * rotation @ centre
    return similarity


def _rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector ``a`` to unit vector ``b``."""
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    if c < -1.0 + 1e-9:  # opposite: turn half way round any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    vx = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + vx + vx @ vx / (1.0 + c)


def _write_outputs(reconstruction, registered: list, images_dir: Path, out_dir: Path, staging: Path,
                   data_from_colmap: np.ndarray, downscale: float, self_check: dict) -> list[str]:
    staging.mkdir(parents=True)
    intrinsics_of: dict[int, Intrinsics] = {}
    for image in registered:
        if image.camera_id not in intrinsics_of:
            intrinsics_of[image.camera_id] = intrinsics_from_colmap(reconstruction.cameras[image.camera_id])
    shared = len(intrinsics_of) == 1
    rel_images = Path(os.path.relpath(images_dir, out_dir))
    frames = []
    for image in registered:
        frame = {"file_path": (rel_images / image.name).as_posix(),
                 "transform_matrix": cam_to_world_from_colmap(image.cam_from_world().matrix()).tolist(),
                 "colmap_im_id": int(image.image_id)}
        if not shared:
            frame.update(transforms_camera_keys(intrinsics_of[image.camera_id]))
        frames.append(frame)
    transforms: dict = {}
    if shared:
        transforms.update(transforms_camera_keys(next(iter(intrinsics_of.values()))))
    transforms.update({"frames": frames, "sparse_points": "sparse_points.npz",
                       "applied_transform": data_from_colmap.tolist(),
                       "sfm": {"tool": "pycolmap", "version": pycolmap_version(),
                               "feature_downscale": downscale, "images": str(images_dir),
                               "self_check": self_check}})
    stage_outputs(staging, transforms, reconstruction, {im.image_id: i for i, im in enumerate(registered)})
    return list(SFM_OUTPUTS)  # transforms.json last: it makes the dataset


def stage_outputs(staging: Path, transforms: dict, reconstruction, frame_of_image: dict[int, int]) -> None:
    """Write :data:`SFM_OUTPUTS` into ``staging``: the points (``frame_of_image``: COLMAP image id -> index in
    ``transforms["frames"]``), the COLMAP model and transforms.json."""
    sparse = sparse_points_from_reconstruction(reconstruction, frame_of_image)
    np.savez(staging / "sparse_points.npz", points=sparse.points, colors=sparse.colors, errors=sparse.errors,
             obs_point=sparse.obs_point, obs_frame=sparse.obs_frame, obs_pixel=sparse.obs_pixel,
             frame_names=np.array([f["file_path"] for f in transforms["frames"]]))
    model_dir = staging / "colmap" / "sparse" / "0"
    model_dir.mkdir(parents=True)
    reconstruction.write(model_dir)
    (staging / "transforms.json").write_text(json.dumps(transforms, indent=2))


def publish_outputs(staging: Path, out_dir: Path, names: list[str]) -> None:
    """Move finished outputs into ``out_dir`` by rename; other files in ``out_dir`` (photos) are untouched."""
    for name in names:
        target = out_dir / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(staging / name, target)


def pycolmap_version() -> str:
    import pycolmap

    return str(getattr(pycolmap, "__version__", "unknown"))


# --- evaluation ---------------------------------------------------------------------------------------------


def similarity_alignment(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """4x4 similarity (Umeyama, least squares, via pycolmap) mapping ``source`` (N,3) points onto ``target``."""
    import pycolmap

    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(source) < 3 or source.shape != target.shape:
        raise NeuralLabelError(f"similarity alignment needs >= 3 matching points (got {len(source)})")
    sim = pycolmap.estimate_sim3d(source, target)
    if sim is None:
        raise NeuralLabelError("similarity alignment failed (degenerate point sets)")
    matrix = np.eye(4)
    matrix[:3, :] = sim.matrix()
    return matrix


def camera_centre_errors(recovered: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> dict:
    """Compare recovered and given camera-to-world poses by image name, after a similarity alignment.

    Returns the per-camera centre error as a fraction of the scene size (the largest distance between two
    given camera centres), its median and max, and the number of cameras compared.
    """
    common = sorted(set(recovered) & set(given))
    if len(common) < 3:
        raise NeuralLabelError(f"only {len(common)} cameras are common to both sets; need >= 3")
    source = np.array([recovered[n][:3, 3] for n in common])
    target = np.array([given[n][:3, 3] for n in common])
    target_from_source = similarity_alignment(source, target)
    aligned = apply_points(target_from_source, source)
    scene_size = float(np.max(np.linalg.norm(target[:, None] - target[None], axis=-1)))
    errors = np.linalg.norm(aligned - target, axis=1) / scene_size
    # Orientation check too: the angle between each given rotation and the recovered one after the best
    # global rotation (fitted on the rotations: centres alone leave it loose for a nearly flat camera path).
    from scipy.spatial.transform import Rotation

    relative = Rotation.from_matrix(np.array([given[n][:3, :3] @ recovered[n][:3, :3].T for n in common]))
    rotation_deg = np.degrees((relative.mean().inv() * relative).magnitude())
    return {"names": common, "errors": errors, "median": float(np.median(errors)), "max": float(errors.max()),
            "scene_size": scene_size, "count": len(common), "target_from_source": target_from_source,
            "rotation_deg": rotation_deg, "median_rotation_deg": float(np.median(rotation_deg))}


# --- self-check ---------------------------------------------------------------------------------------------

#: each camera's strongest verified pairs (by inlier matches) are taken as true: its neighbours in the capture
#: share far more features than a repeated texture elsewhere does (fox: true neighbours 300-3000 inliers,
#: false wallpaper pairs at most ~130)
CHECK_STRONG_PAIRS = 3
#: a pair agrees with the model when this share of its verified inliers lie on the model's epipolar lines
CHECK_MIN_AGREEMENT = 0.5
#: epipolar distance (full-resolution pixels, times the feature downscale) that counts as on the line
CHECK_EPIPOLAR_PX = 4.0
#: a camera the model keeps with fewer own 3D points than this is not supported by the model
CHECK_MIN_OWN_POINTS = 15


@dataclass
class PairAgreement:
    """One verified image pair and the share of its inlier matches the model's cameras explain."""

    a: str
    b: str
    inliers: int
    agreement: float


@dataclass
class SfmCheck:
    """The reconstruction's self-check (:func:`check_reconstruction`): ``flagged`` maps each camera the model
    cannot vouch for to why; ``contradicted`` lists the strong pairs whose own geometry the model denies."""

    cameras: int
    strong_pairs: int
    contradicted: list[PairAgreement]
    flagged: dict[str, str]

    @property
    def passed(self) -> bool:
        return not self.flagged

    def message(self) -> str:
        names = sorted(self.flagged)
        shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
        why = self.flagged[names[0]] if names else ""
        return (f"SfM self-check failed: {len(names)} of {self.cameras} cameras disagree with their own "
                f"matches and are probably misplaced: {shown} ({names[0] if names else ''}: {why})")

    def summary(self) -> dict:
        return {"passed": self.passed, "cameras": self.cameras, "strong_pairs": self.strong_pairs,
                "contradicted_pairs": [[p.a, p.b, p.inliers, round(p.agreement, 3)] for p in self.contradicted],
                "flagged": dict(sorted(self.flagged.items()))}


def check_reconstruction(reconstruction, database: Path, *, epipolar_px: float = CHECK_EPIPOLAR_PX,
                         strong_pairs: int = CHECK_STRONG_PAIRS) -> SfmCheck:
    """Check a COLMAP model against the two-view geometries it was built from (``database``).

    A model that places some cameras wrong still reports a small reprojection error: those cameras' points
    are triangulated from the same wrong poses. What it cannot hide is a camera's strongest verified pairs
    (its true neighbours): their inlier matches then do not lie on the model's epipolar lines. So:

    - each registered camera's ``strong_pairs`` pairs with the most inliers (among registered cameras) are
      scored by the share of their inliers within ``epipolar_px`` of the model's epipolar lines;
    - cameras joined by agreeing strong pairs form groups; for each contradicted pair (share below
      CHECK_MIN_AGREEMENT) between two groups, the smaller group (never the largest) is flagged: it holds
      together but sits in the wrong place; a contradicted pair inside one group flags its two cameras;
    - a camera with fewer than CHECK_MIN_OWN_POINTS 3D points of its own is flagged too.
    """
    import pycolmap

    images = {im.image_id: im for im in reconstruction.images.values() if im.has_pose}
    db = pycolmap.Database.open(str(database))
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        pairs = []
        for pair_id, geometry in zip(pair_ids, geometries):
            i, j = pycolmap.pair_id_to_image_pair(pair_id)
            if i in images and j in images and len(geometry.inlier_matches):
                pairs.append((int(i), int(j), geometry.inlier_matches))
        keypoints = {i: db.read_keypoints(i)[:, :2] for i in {p[0] for p in pairs} | {p[1] for p in pairs}}
    finally:
        db.close()
    strong = _strongest_pairs(pairs, strong_pairs)
    scored = []
    for i, j, matches in strong:
        share = _epipolar_agreement(reconstruction, images[i], images[j], keypoints[i][matches[:, 0]],
                                    keypoints[j][matches[:, 1]], epipolar_px)
        scored.append(PairAgreement(images[i].name, images[j].name, len(matches), share))
    contradicted = [p for p in scored if p.agreement < CHECK_MIN_AGREEMENT]
    flagged: dict[str, str] = {}
    if contradicted:
        groups = _groups([im.name for im in images.values()],
                         [(p.a, p.b) for p in scored if p.agreement >= CHECK_MIN_AGREEMENT])
        group_of = {name: group for group in groups for name in group}
        main = max(groups, key=len)
        for p in contradicted:
            a, b = group_of[p.a], group_of[p.b]
            if a is b:  # one group: the model denies this pair alone; name both cameras
                for name, other in ((p.a, p.b), (p.b, p.a)):
                    flagged.setdefault(name, f"the model contradicts {p.inliers} verified matches with {other} "
                                             f"({100 * p.agreement:.0f}% on its epipolar lines)")
                continue
            # Two groups that each hold together: the smaller one (never the largest) sits in the wrong place.
            wrong, other = (a, p.b) if b is main or (a is not main and len(a) <= len(b)) else (b, p.a)
            for name in wrong:
                flagged.setdefault(name, f"in a group of {len(wrong)} cameras whose {p.inliers} verified "
                                         f"matches with {other} the model contradicts")
    for image in images.values():
        if image.num_points3D < CHECK_MIN_OWN_POINTS and image.name not in flagged:
            flagged[image.name] = f"only {image.num_points3D} 3D points of its own"
    return SfmCheck(cameras=len(images), strong_pairs=len(strong), contradicted=contradicted, flagged=flagged)


def prune_weak_pairs(database: Path, fraction: float) -> int:
    """Delete the verified pairs with fewer inlier matches than ``fraction`` of the strongest pair of the
    weaker of their two images. A repeated texture (the fox's wallpaper) verifies false pairs between views
    of different copies of the pattern; they are weak next to each view's true neighbours (fox, 1920 px:
    false pairs at most 133 inliers, 5-20 % of their images' strongest; none reach 20 %). Every image keeps
    its strongest pair. Returns how many pairs were deleted."""
    import pycolmap

    db = pycolmap.Database.open(str(database))
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        pairs = [(*pycolmap.pair_id_to_image_pair(pid), len(g.inlier_matches)) for pid, g in zip(pair_ids, geometries)]
        strongest: dict[int, int] = {}
        for i, j, count in pairs:
            strongest[i] = max(strongest.get(i, 0), count)
            strongest[j] = max(strongest.get(j, 0), count)
        weak = [(i, j) for i, j, count in pairs if 0 < count < fraction * min(strongest[i], strongest[j])]
        for i, j in weak:
            db.delete_two_view_geometry(i, j)
    finally:
        db.close()
    return len(weak)


def drop_agreeing_pairs(reconstruction, database: Path, flagged: set[str], epipolar_px: float) -> int:
    """Delete from ``database`` the verified pairs between a ``flagged`` camera and an unflagged one that the
    (failed) model agrees with: the pairs that put the flagged cameras where they are. Returns how many."""
    import pycolmap

    images = {im.image_id: im for im in reconstruction.images.values() if im.has_pose}
    db = pycolmap.Database.open(str(database))
    try:
        pair_ids, geometries = db.read_two_view_geometries()
        dropped = 0
        for pair_id, geometry in zip(pair_ids, geometries):
            i, j = pycolmap.pair_id_to_image_pair(pair_id)
            if i not in images or j not in images or len(geometry.inlier_matches) == 0 or \
                    (images[i].name in flagged) == (images[j].name in flagged):
                continue
            matches = geometry.inlier_matches
            share = _epipolar_agreement(reconstruction, images[i], images[j], db.read_keypoints(i)[matches[:, 0], :2],
                                        db.read_keypoints(j)[matches[:, 1], :2], epipolar_px)
            if share >= CHECK_MIN_AGREEMENT:
                db.delete_two_view_geometry(i, j)
                dropped += 1
    finally:
        db.close()
    return dropped


def _strongest_pairs(pairs: list, count: int) -> list:
    """The union over images of each image's ``count`` pairs with the most inlier matches."""
    by_image: dict[int, list] = {}
    for pair in pairs:
        by_image.setdefault(pair[0], []).append(pair)
        by_image.setdefault(pair[1], []).append(pair)
    chosen = {}
    for own in by_image.values():
        for pair in sorted(own, key=lambda p: -len(p[2]))[:count]:
            chosen[(pair[0], pair[1])] = pair
    return [chosen[key] for key in sorted(chosen)]


def _epipolar_agreement(reconstruction, image_a, image_b, pixels_a: np.ndarray, pixels_b: np.ndarray,
                        max_px: float) -> float:
    """Share of matches (pixels_a[k] <-> pixels_b[k]) within ``max_px`` (Sampson distance, in pixels of the
    mean focal length) of the epipolar geometry the model's poses and lenses give the two images."""
    camera_a = reconstruction.cameras[image_a.camera_id]
    camera_b = reconstruction.cameras[image_b.camera_id]
    xa = np.c_[camera_a.cam_from_img(np.asarray(pixels_a, np.float64)), np.ones(len(pixels_a))]
    xb = np.c_[camera_b.cam_from_img(np.asarray(pixels_b, np.float64)), np.ones(len(pixels_b))]
    a = image_a.cam_from_world().matrix()
    b = image_b.cam_from_world().matrix()
    rotation = b[:, :3] @ a[:, :3].T
    t = b[:, 3] - rotation @ a[:, 3]
    t = t / max(np.linalg.norm(t), 1e-12)
    essential = np.array([[0.0, -t[2], t[1]], [t[2], 0.0, -t[0]], [-t[1], t[0], 0.0]]) @ rotation
    line_b = xa @ essential.T
    line_a = xb @ essential
    numerator = np.sum(xb * line_b, axis=1) ** 2
    denominator = line_b[:, 0] ** 2 + line_b[:, 1] ** 2 + line_a[:, 0] ** 2 + line_a[:, 1] ** 2
    focal = 0.5 * (camera_a.mean_focal_length() + camera_b.mean_focal_length())
    distance = np.sqrt(numerator / np.maximum(denominator, 1e-300)) * focal
    return float(np.mean(distance < max_px))


def _groups(names: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Connected components of the graph (names, edges), each sorted; in order of their first name."""
    parent = {n: n for n in names}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        parent[root(a)] = root(b)
    groups: dict[str, list[str]] = {}
    for n in sorted(names):
        groups.setdefault(root(n), []).append(n)
    return list(groups.values())
