"""Pictures of a bake's output for people: ``neurallabel inspect DIR`` (DIR = a bake's ``--out``).

Reads ``DIR/raw`` (labels.json, instance ids, depth, confidence) -- or, for a bake without raw, its BOP scene
(scene_gt, scene_camera, mask_visib, depth, models_info) -- and, when present, the photos BOP copied
(``DIR/bop/train/000000/rgb``), and writes into ``out`` (default ``DIR/inspect``):

- ``overlay/NNNNNN.png``: visible masks filled semi-transparently with their contours, the 2D box, the
  projected 3D box (8 corners, 12 edges), the pose axes and "instance (category)" names over the photo
  (a grey picture of the masks for a synthetic view without photo);
- ``depth/NNNNNN.png``: the depth map, turbo colours (near = red), NaN black;
- ``confidence/NNNNNN.png``: the field's confidence (viridis; 0 = dark), when the bake has one;
- ``contact_sheet.png``: a grid of overlay thumbnails;
- ``index.html``: thumbnails (relative links) and per-frame statistics.

The bake's files are inputs and are never written over: the output folder is claimed (kind ``inspect``) and
may lie inside DIR only as a folder of its own that holds none of the bake's files.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from ..errors import NeuralLabelError
from ..io.atomic import png_bytes, write_bytes
from ..io.outdir import claim_output_dir
from ..progress import ProgressFn, report

KIND = "inspect"
THUMB_WIDTH = 240
SHEET_COLUMNS = 6
# The 12 edges of a box whose corners come in itertools.product order (index = 4 x + 2 y + z, each 0/1):
# two corners share an edge when their indices differ in exactly one bit.
BOX_EDGES = tuple((i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1)


# --- reading the bake --------------------------------------------------------------------------------------


BOP_SCENE = ("bop", "train", "000000")


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NeuralLabelError(f"{path}: cannot read it ({exc})", field="bake") from None


def read_labels(bake_dir: Path) -> dict:
    """The bake's labels as ``raw/labels.json`` has them (``source`` "raw"), or, for a bake without raw, the
    same made from its BOP scene (``source`` "bop"; millimetres). NeuralLabelError (field ``bake``) when the
    folder holds neither."""
    raw = bake_dir / "raw" / "labels.json"
    if raw.is_file():
        return {**_json(raw), "source": "raw"}
    scene = bake_dir.joinpath(*BOP_SCENE)
    if (scene / "scene_gt.json").is_file():
        return labels_from_bop(bake_dir)
    raise NeuralLabelError(f"{bake_dir} holds no raw/labels.json nor bop/train/000000/scene_gt.json: give a "
                           f"bake's output folder (--formats raw or bop)", field="bake")


def labels_from_bop(bake_dir: Path) -> dict:
    """labels.json's frames from a BOP scene: camera, and per instance the pose, visible fraction, 2D box and
    the model's bounding box (models_info.json) projected with the pose."""
    scene = bake_dir.joinpath(*BOP_SCENE)
    gts, cameras = _json(scene / "scene_gt.json"), _json(scene / "scene_camera.json")
    infos = _json(scene / "scene_gt_info.json") if (scene / "scene_gt_info.json").is_file() else {}
    models_path = bake_dir / "bop" / "models" / "models_info.json"
    models = _json(models_path) if models_path.is_file() else {}
    frames = []
    for im, gt in sorted(gts.items(), key=lambda item: int(item[0])):
        K = np.asarray(cameras[im]["cam_K"], dtype=np.float64).reshape(3, 3)
        size = _image_size(scene, int(im))
        instances = []
        for k, (pose, info) in enumerate(zip(gt, infos.get(im, [{}] * len(gt)))):
            R = np.asarray(pose["cam_R_m2c"], dtype=np.float64).reshape(3, 3)
            t = np.asarray(pose["cam_t_m2c"], dtype=np.float64).reshape(3)
            model = models.get(str(pose["obj_id"]))
            lo = np.array([model[f"min_{a}"] for a in "xyz"]) if model else np.zeros(3)
            hi = lo + np.array([model[f"size_{a}"] for a in "xyz"]) if model else np.zeros(3)
            corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
            cam = corners @ R.T + t
            z = cam[:, 2]
            px = (cam @ K.T)[:, :2] / np.where(np.abs(z) > 1e-9, z, 1e-9)[:, None]
            box = info.get("bbox_visib")
            instances.append({
                "instance_id": int(pose.get("instance_id", k + 1)), "category_id": int(pose["obj_id"]),
                "name": f"obj_{int(pose['obj_id']):06d}", "mask": f"mask_visib/{int(im):06d}_{k:06d}.png",
                "bbox_visib_coco": box if box and box[2] > 0 else None, "visib_fract": info.get("visib_fract", 0.0),
                "corners_px": px.tolist(), "corners_z": (z if model else -np.ones(8)).tolist(),
                "R_m2c": R.ravel().tolist(), "t_m2c": t.tolist()})
        frames.append({"index": int(im), "width": size[1], "height": size[0], "K": K.tolist(),
                       "depth_scale": cameras[im].get("depth_scale", 1.0), "instances": instances})
    return {"source": "bop", "categories": {}, "frames": frames}


def _image_size(scene: Path, im: int) -> tuple[int, int]:
    """(height, width) of BOP image ``im`` from its depth or first mask."""
    for path in [scene / "depth" / f"{im:06d}.png", *sorted((scene / "mask_visib").glob(f"{im:06d}_*.png"))]:
        image = _read(path)
        if image is not None:
            return image.shape[:2]
    raise NeuralLabelError(f"{scene}: frame {im} has no depth or mask image", field="bake")


def read_instance(bake_dir: Path, labels: dict, frame: dict) -> np.ndarray:
    """The frame's visible instance ids (uint16, 0 = background): raw's id image, or BOP's visible masks."""
    n, shape = f"{frame['index']:06d}", (frame["height"], frame["width"])
    if labels["source"] == "raw":
        image = _read(bake_dir / "raw" / "instance" / f"{n}.png")
        return np.zeros(shape, np.uint16) if image is None else image
    ids = np.zeros(shape, np.uint16)
    for inst in frame["instances"]:
        mask = _read(bake_dir.joinpath(*BOP_SCENE, inst["mask"]))
        if mask is not None:
            ids[mask > 0] = inst["instance_id"]
    return ids


def read_depth(bake_dir: Path, labels: dict, frame: dict) -> Optional[np.ndarray]:
    """The frame's depth (NaN = none): raw's .npy (world units), or BOP's PNG (mm), or None."""
    n = f"{frame['index']:06d}"
    if labels["source"] == "raw":
        path = bake_dir / "raw" / "depth" / f"{n}.npy"
        return np.load(path) if path.is_file() else None
    image = _read(bake_dir.joinpath(*BOP_SCENE, "depth", f"{n}.png"))
    if image is None:
        return None
    return np.where(image > 0, image.astype(np.float64) * float(frame["depth_scale"]), np.nan)


def select_frames(frames: list[dict], span: Optional[tuple[int, Optional[int]]], max_frames: Optional[int]
                  ) -> list[dict]:
    """The frames whose index lies in ``span`` [A, B) (None: all), at most ``max_frames`` of them spread evenly
    over the selection (a long bake's overview shows its start, middle and end)."""
    if span is not None:
        start, stop = span
        frames = [f for f in frames if f["index"] >= start and (stop is None or f["index"] < stop)]
    if max_frames is not None and len(frames) > max_frames:
        picks = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in sorted(set(picks.tolist()))]
    return frames


def _read(path: Path) -> Optional[np.ndarray]:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None


def read_photo(bake_dir: Path, index: int, width: int, height: int) -> Optional[np.ndarray]:
    """The frame's photo (RGB uint8, resized to the labels' size) from BOP's copy, or None."""
    rgb_dir = bake_dir / "bop" / "train" / "000000" / "rgb"
    for path in sorted(rgb_dir.glob(f"{index:06d}.*")) if rgb_dir.is_dir() else ():
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is not None:
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
            return image[:, :, ::-1].copy()
    return None


# --- drawing ------------------------------------------------------------------------------------------------


def colour(instance_id: int) -> tuple[int, int, int]:
    """A stable, well-separated bright RGB colour per id (golden-ratio hue steps)."""
    hue = int((instance_id * 0.618033988749895 % 1.0) * 180)
    hsv = np.array([[[hue, 200, 255]]], dtype=np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def draw_box3d(image: np.ndarray, corners_px: np.ndarray, rgb: tuple[int, int, int]) -> None:
    for i, j in BOX_EDGES:
        cv2.line(image, _pt(corners_px[i]), _pt(corners_px[j]), rgb, 1, cv2.LINE_AA)


def draw_axes(image: np.ndarray, K: np.ndarray, R: np.ndarray, t: np.ndarray, length: float) -> None:
    """The model's x, y, z axes (red, green, blue) from its origin, pinhole projection (``K``, OpenCV camera)."""
    points = t[None, :] + length * np.vstack([np.zeros(3), R.T])  # origin, then the axis tips
    if np.any(points[:, 2] <= 1e-9):  # behind the camera: no meaningful picture
        return
    px = (K @ points.T).T
    px = px[:, :2] / px[:, 2:3]
    for tip, rgb in zip(px[1:], ((255, 0, 0), (0, 255, 0), (0, 0, 255))):
        cv2.arrowedLine(image, _pt(px[0]), _pt(tip), rgb, 2, cv2.LINE_AA, tipLength=0.15)


def _box_diagonal(inst: dict, K: np.ndarray) -> float:
    """The 3D box's diagonal (world units) from its corners' pixels and depths, for the axes' length."""
    corners = np.asarray(inst["corners_px"], dtype=np.float64)
    z = np.asarray(inst["corners_z"], dtype=np.float64)
    rays = np.linalg.solve(K, np.vstack([corners.T, np.ones(len(corners))]))
    points = (rays * z[None, :]).T
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def draw_overlay(background: np.ndarray, instance: np.ndarray, frame: dict, categories: dict) -> np.ndarray:
    """The labels of one frame over ``background`` (RGB uint8): filled masks and contours, 2D boxes, 3D boxes,
    pose axes and names."""
    out = background.astype(np.float64)
    for inst in frame["instances"]:
        mask = instance == inst["instance_id"]
        out[mask] = 0.55 * out[mask] + 0.45 * np.asarray(colour(inst["instance_id"]), dtype=np.float64)
    image = np.ascontiguousarray(out.round().clip(0, 255).astype(np.uint8))
    K = np.asarray(frame["K"], dtype=np.float64).reshape(3, 3)
    scale = float(np.clip(image.shape[1] / 1600, 0.25, 0.6))  # names readable, yet small on small images
    for inst in frame["instances"]:
        rgb = colour(inst["instance_id"])
        mask = (instance == inst["instance_id"]).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(image, contours, -1, rgb, 1, cv2.LINE_AA)
        corners = np.asarray(inst["corners_px"], dtype=np.float64).reshape(8, 2)
        if np.all(np.asarray(inst["corners_z"]) > 0):  # a box reaching behind the camera projects nonsense
            draw_box3d(image, corners, rgb)
            draw_axes(image, K, np.asarray(inst["R_m2c"], dtype=np.float64).reshape(3, 3),
                      np.asarray(inst["t_m2c"], dtype=np.float64).reshape(3), 0.35 * _box_diagonal(inst, K))
        box = inst.get("bbox_visib_coco")
        if box:
            x, y, w, h = box
            cv2.rectangle(image, _pt((x, y)), _pt((x + w - 1, y + h - 1)), (255, 255, 255), 1)
            name = f"{inst['name']} ({categories.get(str(inst['category_id']), inst['category_id'])})"
            origin = (int(x), max(int(y) - 3, 10))
            cv2.putText(image, name, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
            cv2.putText(image, name, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return image


def colour_depth(depth: np.ndarray) -> np.ndarray:
    """Depth (NaN = no surface) as RGB: turbo colours from near (red) to far (blue) over the 1-99 % range,
    NaN black."""
    finite = np.isfinite(depth)
    level = np.zeros(depth.shape, dtype=np.uint8)
    if finite.any():
        near, far = np.percentile(depth[finite], [1, 99])
        scaled = 1.0 - np.clip((depth - near) / max(far - near, 1e-9), 0.0, 1.0)
        level = np.where(finite, np.round(255 * np.nan_to_num(scaled)), 0).astype(np.uint8)
    rgb = cv2.applyColorMap(level, cv2.COLORMAP_TURBO)[:, :, ::-1].copy()
    rgb[~finite] = 0
    return rgb


def colour_confidence(confidence_u8: np.ndarray) -> np.ndarray:
    """The confidence image (uint8, 255 = sure) as RGB (viridis)."""
    return cv2.applyColorMap(confidence_u8, cv2.COLORMAP_VIRIDIS)[:, :, ::-1].copy()


def thumbnail(image: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def contact_sheet(images: list[np.ndarray], columns: int = SHEET_COLUMNS, width: int = THUMB_WIDTH) -> np.ndarray:
    """Thumbnails of ``images`` (RGB) in a grid, row by row, on black with a 4-pixel gap."""
    thumbs = [thumbnail(im, width) for im in images]
    columns = max(1, min(columns, len(thumbs)))
    rows = math.ceil(len(thumbs) / columns)
    cell_h = max(t.shape[0] for t in thumbs)
    gap = 4
    sheet = np.zeros((rows * (cell_h + gap) + gap, columns * (width + gap) + gap, 3), dtype=np.uint8)
    for k, t in enumerate(thumbs):
        y, x = gap + (k // columns) * (cell_h + gap), gap + (k % columns) * (width + gap)
        sheet[y:y + t.shape[0], x:x + t.shape[1]] = t
    return sheet


# --- the page ----------------------------------------------------------------------------------------------


def frame_stats(frame: dict, confidence_u8: Optional[np.ndarray]) -> dict:
    """Per-frame numbers: instances, their mean visible fraction, the mean confidence (None without one)."""
    fractions = [float(i["visib_fract"]) for i in frame["instances"]]
    return {"index": frame["index"], "instances": len(frame["instances"]),
            "visible_fraction": float(np.mean(fractions)) if fractions else None,
            "mean_confidence": None if confidence_u8 is None else float(confidence_u8.mean() / 255.0)}


def _number(value: Optional[float]) -> str:
    return "&ndash;" if value is None else f"{value:.3f}"


def index_html(title: str, rows: list[dict]) -> str:
    """The static page: the contact sheet, then a row per frame with its pictures (relative links) and
    numbers. ``rows``: :func:`frame_stats` plus ``pictures`` {label: relative path}."""
    lines = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;background:#222;color:#eee}td,th{padding:4px 8px}"
             "img{display:block}a{color:#9cf}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<p><a href=\"contact_sheet.png\"><img src=\"contact_sheet.png\" alt=\"contact sheet\" "
             "style=\"max-width:100%\"></a></p>",
             "<table><tr><th>frame</th><th>instances</th><th>visible fraction</th><th>mean confidence</th>"
             "<th>pictures</th></tr>"]
    for row in rows:
        pictures = "".join(
            f"<td><a href=\"{html.escape(path)}\"><img src=\"{html.escape(path)}\" alt=\"{html.escape(label)}\" "
            f"width=\"{THUMB_WIDTH}\"></a>{html.escape(label)}</td>" for label, path in row["pictures"].items())
        lines.append(f"<tr><td>{row['index']:06d}</td><td>{row['instances']}</td>"
                     f"<td>{_number(row['visible_fraction'])}</td><td>{_number(row['mean_confidence'])}</td>"
                     f"{pictures}</tr>")
    lines += ["</table>", "</body></html>", ""]
    return "\n".join(lines)


# --- the job -----------------------------------------------------------------------------------------------


def claim_inspect_dir(bake_dir: Path, out_dir: Path) -> None:
    """Claim ``out_dir``; every entry of the bake folder except ``out_dir`` itself is an input that must lie
    outside it (so ``DIR/inspect`` is fine, ``DIR`` or ``DIR/raw/x`` are refused)."""
    out_real = out_dir.resolve()
    inputs = [p for p in bake_dir.iterdir() if p.resolve() != out_real] if bake_dir.is_dir() else []
    if bake_dir.resolve() == out_real or out_real in bake_dir.resolve().parents:
        inputs = [bake_dir]  # the bake folder inside the output: refused as an input under it
    claim_output_dir(out_dir, kind=KIND, manifest={"kind": KIND, "bake": str(bake_dir.resolve())},
                     inputs={"bake output": inputs})


def inspect_bake(bake_dir: str | Path, out_dir: Optional[str | Path] = None, *,
                 frames: Optional[tuple[int, Optional[int]]] = None, max_frames: Optional[int] = None,
                 progress: Optional[ProgressFn] = None) -> dict[str, Any]:
    """Write the pictures of the bake in ``bake_dir`` into ``out_dir`` (default ``bake_dir/inspect``); returns
    the output paths and per-frame statistics."""
    bake_dir = Path(bake_dir)
    out_dir = Path(out_dir) if out_dir is not None else bake_dir / KIND
    labels = read_labels(bake_dir)
    chosen = select_frames(labels.get("frames", []), frames, max_frames)
    if not chosen:
        raise NeuralLabelError(f"no baked frame of {bake_dir} lies in the selection", field="frames")
    claim_inspect_dir(bake_dir, out_dir)
    categories = labels.get("categories", {})
    raw = bake_dir / "raw"
    rows, overlays = [], []
    report(progress, 0, len(chosen), "inspect")
    for k, frame in enumerate(chosen):
        n = f"{frame['index']:06d}"
        shape = (frame["height"], frame["width"])
        instance = read_instance(bake_dir, labels, frame)
        # BOP's photo of a camera with lens distortion is undistorted: it would not match raw's masks.
        distorted = labels["source"] == "raw" and any(float(c) != 0.0 for c in frame.get("distortion", []))
        photo = None if distorted else read_photo(bake_dir, frame["index"], frame["width"], frame["height"])
        if photo is None:  # a synthetic view: the masks on grey
            photo = np.full(shape + (3,), 64, np.uint8)
        overlay = draw_overlay(photo, instance, frame, categories)
        pictures = {"overlay": f"overlay/{n}.png"}
        write_bytes(out_dir / pictures["overlay"], png_bytes(overlay))
        depth = read_depth(bake_dir, labels, frame)
        if depth is not None:
            pictures["depth"] = f"depth/{n}.png"
            write_bytes(out_dir / pictures["depth"], png_bytes(colour_depth(depth)))
        confidence = _read(raw / "confidence" / f"{n}.png")
        if confidence is not None:
            pictures["confidence"] = f"confidence/{n}.png"
            write_bytes(out_dir / pictures["confidence"], png_bytes(colour_confidence(confidence)))
        rows.append({**frame_stats(frame, confidence), "pictures": pictures})
        overlays.append(overlay)
        report(progress, k + 1, len(chosen), "inspect")
    write_bytes(out_dir / "contact_sheet.png", png_bytes(contact_sheet(overlays)))
    write_bytes(out_dir / "index.html", index_html(f"NeuralLabel bake {bake_dir.resolve().name}", rows).encode())
    return {"out": str(out_dir), "index": str(out_dir / "index.html"),
            "contact_sheet": str(out_dir / "contact_sheet.png"), "frames": rows}
