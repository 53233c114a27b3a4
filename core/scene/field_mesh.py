"""A trained field's surface as a triangle mesh, for other tools (``neurallabel export-mesh``, Blender's
"Export Field Mesh").

Marching cubes (PyMCubes, :func:`~..labels.box_mesh.iso_surface`) on the field's density sampled at voxel
centres over its detailed region (``roi_aabb``, the data frame), ``resolution`` voxels along the region's
longest side. The iso-level is a density per data unit; by default the one at which transmittance drops to 1/2
across one step of the field's renderer (``ln 2 / step``, :func:`~..labels.box_mesh.density_threshold`), where
a sharp field renders its surfaces. The surface is closed where it meets the region's walls. Vertices stay in
the dataset's frame (the field's own), like the field's point cloud; each vertex may get the field's colour
seen at the vertex looking inwards along its normal (as a camera in front of the surface sees it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import NeuralLabelError
from ..labels.box_mesh import density_threshold, iso_surface, sample_density
from ..progress import ProgressFn
from .queries import FieldQuery

DEFAULT_RESOLUTION = 256
MAX_RESOLUTION = 1024  # 1024^3 samples is already a billion density queries


def extract_field_mesh(field, *, resolution: int = DEFAULT_RESOLUTION, threshold: Optional[float] = None,
                       colour: bool = True, chunk: int = 1 << 18, progress: Optional[ProgressFn] = None):
    """The field's iso-surface over its ``roi_aabb`` as a trimesh in the data frame (vertex colours from the
    field's rgb with ``colour``), and the iso-level used: ``(mesh, threshold)``. NeuralLabelError (field
    ``threshold``) when no density in the region reaches the level."""
    if isinstance(resolution, bool) or not isinstance(resolution, (int, np.integer)) or not 8 <= resolution <= MAX_RESOLUTION:
        raise NeuralLabelError(f"resolution {resolution!r}: expected a whole number from 8 to {MAX_RESOLUTION}",
                               field="resolution")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise NeuralLabelError(f"threshold {threshold!r}: expected a positive density", field="threshold")
    query = FieldQuery(field, device=str(field.aabb.device))
    roi = np.asarray(field.config.roi_aabb, dtype=np.float64).reshape(2, 3)
    size = roi[1] - roi[0]
    voxel = float(size.max()) / int(resolution)
    counts = np.maximum(np.ceil(size / voxel).astype(int), 2)
    first = roi.mean(axis=0) - (counts - 1) * voxel / 2  # the grid's centres, centred on the region
    axes = [first[i] + np.arange(counts[i]) * voxel for i in range(3)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    volume = sample_density(query.density, grid, chunk, progress, "field mesh").reshape(*counts)
    level = float(threshold) if threshold is not None else density_threshold(query.step or voxel)
    mesh = iso_surface(volume, level, voxel, first)
    if mesh is None:
        raise NeuralLabelError(f"the field's density stays under {level:.4g} everywhere in its region "
                               f"(highest: {volume.max():.4g}): give a lower --threshold", field="threshold")
    mesh.fix_normals()  # outward, so that -normal looks into the surface
    if colour:
        mesh.visual.vertex_colors = vertex_colours(field, np.asarray(mesh.vertices), -mesh.vertex_normals, chunk)
    return mesh, level


def vertex_colours(field, points: np.ndarray, directions: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(N, 4) uint8 RGBA: the field's colour at ``points`` (data frame) seen along unit ``directions``."""
    import torch

    device = field.aabb.device
    out = np.empty((len(points), 3))
    with torch.no_grad():
        for start in range(0, len(points), chunk):
            p = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=device)
            d = torch.as_tensor(directions[start:start + chunk], dtype=torch.float32, device=device)
            out[start:start + chunk] = field.rgb(p, d).double().cpu().numpy()
    rgb = np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8)
    return np.hstack([rgb, np.full((len(points), 1), 255, np.uint8)])


def ply_bytes(mesh) -> bytes:
    """Binary PLY of ``mesh`` with vertex normals (and colours, when it has them)."""
    import trimesh

    return trimesh.exchange.ply.export_ply(mesh, encoding="binary", vertex_normal=True, include_attributes=False)


def export_field_mesh(field_path: str | Path, out: str | Path, *, resolution: int = DEFAULT_RESOLUTION,
                      threshold: Optional[float] = None, colour: bool = True, device: str = "cpu",
                      progress: Optional[ProgressFn] = None) -> dict:
    """Write the mesh of the field checkpoint at ``field_path`` to the PLY file ``out`` (atomically); returns
    its counts and the iso-level."""
    from ..field.checkpoint import check_finite, load_checkpoint
    from ..io.atomic import write_bytes

    out, field_path = Path(out), Path(field_path)
    if out.suffix.lower() != ".ply":
        raise NeuralLabelError(f"out {out}: the mesh is written as PLY: name a .ply file", field="out")
    if out.is_dir():
        raise NeuralLabelError(f"out {out}: is a folder; name a .ply file", field="out")
    if out.exists() and out.resolve() == field_path.resolve():
        raise NeuralLabelError(f"out {out}: is the field itself", field="out")
    checkpoint = load_checkpoint(field_path, device=device)
    check_finite(checkpoint.field)
    mesh, level = extract_field_mesh(checkpoint.field, resolution=resolution, threshold=threshold, colour=colour,
                                     progress=progress)
    write_bytes(out, ply_bytes(mesh))
    return {"out": str(out), "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
            "threshold": level, "resolution": int(resolution), "colour": bool(colour)}
