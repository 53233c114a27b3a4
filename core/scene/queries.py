"""Where the bake gets the scene's depth: a trained field, or a generated scene's true depth maps.

The label math (:mod:`.labels`) asks a depth source only for the pixels a decision needs. Both sources work in
the dataset's own frame (``data`` units); the caller scales to world units with ``world_from_data``'s scale.

- :class:`FieldDepth` renders z-depth with the radiance field (``core.render.render_rays``), plus a per-pixel
  confidence from the field's weight distribution along each ray, and gives the field's density for box-mesh
  extraction.
- :class:`TruthDepth` reads a generated scene's true z-depth (``gt/depth/NNNNNN.npy``): it isolates the label
  math from the field's errors in tests and benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from ..geometry.cameras import camera_rays
from ..data.dataset import Frame
from ..errors import NeuralLabelError

#: The confidence of a pixel is the share of the ray's weight that lies within this fraction of the reported
#: depth (e.g. 0.02: within 2 %). A crisp opaque surface puts almost all weight there (-> ~1); fog,
#: floaters, or weight split between a glass and what is behind it spread it out (-> low).
CONFIDENCE_WINDOW = 0.02


class TruthDepth:
    """True z-depth of a generated scene (``SCENE/gt/depth/<image stem>.npy``; inf/NaN = nothing hit)."""

    has_density = False

    def __init__(self, scene_dir: str | Path) -> None:
        self.scene_dir = Path(scene_dir)
        self.depth_dir = self.scene_dir / "gt" / "depth"
        if not self.depth_dir.is_dir():
            raise NeuralLabelError(f"{self.scene_dir}: no gt/depth folder (not a generated scene)")
        self._cache: dict[str, np.ndarray] = {}

    def _frame_depth(self, frame: Frame) -> np.ndarray:
        name = frame.image_path.stem
        if name not in self._cache:
            path = self.depth_dir / f"{name}.npy"
            if not path.is_file():
                raise NeuralLabelError(f"{path}: true depth for frame {frame.index} does not exist")
            depth = np.load(path).astype(np.float64)
            if depth.shape != (frame.intrinsics.height, frame.intrinsics.width):
                raise NeuralLabelError(f"{path}: depth is {depth.shape[1]}x{depth.shape[0]}, the camera is "
                                       f"{frame.intrinsics.width}x{frame.intrinsics.height}")
            depth[~np.isfinite(depth)] = np.nan
            self._cache = {name: depth}  # one frame at a time
        return self._cache[name]

    def z_depth(self, frame: Frame, rows: np.ndarray, cols: np.ndarray, with_confidence: bool = False
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        depth = self._frame_depth(frame)[rows, cols]
        return depth, (np.isfinite(depth).astype(np.float64) if with_confidence else None)


class FieldDepth:
    """Depth and confidence rendered from a trained radiance field (``core.field.load_field``)."""

    has_density = True

    def __init__(self, field, device: str = "cpu", depth: str = "median", chunk: int = 65536) -> None:
        if depth not in ("median", "expected"):
            raise NeuralLabelError(f"field depth must be 'median' or 'expected', got {depth!r}")
        self.field = field
        self.device = device
        self.depth = depth
        self.chunk = chunk

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu", **kwargs) -> "FieldDepth":
        from ..field.model import load_field

        return cls(load_field(path, device=device), device=device, **kwargs)

    def z_depth(self, frame: Frame, rows: np.ndarray, cols: np.ndarray, with_confidence: bool = False
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        import torch

        from ..render.volume import render_rays

        n = len(rows)
        if n == 0:
            return np.zeros(0), (np.zeros(0) if with_confidence else None)
        pixels = np.stack([np.asarray(cols) + 0.5, np.asarray(rows) + 0.5], axis=-1)
        origins, directions, z_per_distance = camera_rays(frame.intrinsics, frame.cam_to_data, pixels)
        z = np.empty(n)
        confidence = np.empty(n) if with_confidence else None
        key = "median_distance" if self.depth == "median" else "distance"
        with torch.no_grad():
            for start in range(0, n, self.chunk):
                sl = slice(start, start + self.chunk)
                o = torch.as_tensor(origins[sl], dtype=torch.float32, device=self.device)
                d = torch.as_tensor(directions[sl], dtype=torch.float32, device=self.device)
                out = render_rays(self.field, o, d, depth_only=True, return_samples=with_confidence,
                                  chunk=self.chunk)
                distance = out[key].double()
                opacity = out["opacity"].double()
                z_chunk = (distance.cpu().numpy() * z_per_distance[sl])
                z_chunk[opacity.cpu().numpy() < 0.5] = np.nan
                z[sl] = z_chunk
                if with_confidence:
                    confidence[sl] = _weight_near(out, out["median_distance"].double(), len(o)).cpu().numpy()
        return z, confidence

    @property
    def step(self) -> Optional[float]:
        """The field renderer's step length (data units), which sets the surface's density level."""
        step = getattr(self.field, "render_step_size", None)
        return float(step) if step else None

    def density(self, points: np.ndarray, chunk: int = 1 << 18) -> np.ndarray:
        """The field's volume density (per data unit of length) at ``points`` (N, 3), data frame."""
        import torch

        out = np.empty(len(points))
        with torch.no_grad():
            for start in range(0, len(points), chunk):
                p = torch.as_tensor(points[start:start + chunk], dtype=torch.float32, device=self.device)
                out[start:start + chunk] = self.field.density(p).reshape(-1).double().cpu().numpy()
        return out


def _weight_near(out: dict, median_distance, n_rays: int):
    """Per ray: the weight whose sample lies within ``CONFIDENCE_WINDOW`` of the median distance."""
    import torch

    ray = out["ray_indices"].long()
    mid = 0.5 * (out["t_starts"].reshape(-1) + out["t_ends"].reshape(-1)).double()
    weights = out["weights"].reshape(-1).double()
    centre = median_distance[ray]
    near = (mid - centre).abs() <= CONFIDENCE_WINDOW * centre
    mass = torch.zeros(n_rays, dtype=torch.float64, device=weights.device)
    mass.index_add_(0, ray, torch.where(near, weights, torch.zeros_like(weights)))
    return mass.clamp(0.0, 1.0)


class CachedDepth:
    """Remembers another source's whole-frame depth (and confidence) per frame: for trying several label
    options on the same frames (benchmarks) without rendering the field again."""

    def __init__(self, source) -> None:
        self.source = source
        self.has_density = getattr(source, "has_density", False)
        self._frames: dict[int, tuple[np.ndarray, Optional[np.ndarray]]] = {}

    @property
    def step(self) -> Optional[float]:
        return getattr(self.source, "step", None)

    def density(self, points: np.ndarray) -> np.ndarray:
        return self.source.density(points)

    def z_depth(self, frame: Frame, rows: np.ndarray, cols: np.ndarray, with_confidence: bool = False
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
        cached = self._frames.get(frame.index)
        h, w = frame.intrinsics.height, frame.intrinsics.width
        if cached is None and len(rows) < h * w:  # a part of a frame not seen whole yet: ask the source
            return self.source.z_depth(frame, rows, cols, with_confidence=with_confidence)
        if cached is None or (with_confidence and cached[1] is None):
            h, w = frame.intrinsics.height, frame.intrinsics.width
            all_rows, all_cols = np.divmod(np.arange(h * w), w)
            z, conf = self.source.z_depth(frame, all_rows, all_cols, with_confidence=with_confidence)
            cached = (z.reshape(h, w), None if conf is None else conf.reshape(h, w))
            self._frames[frame.index] = cached
        z_map, conf_map = cached
        return z_map[rows, cols], (conf_map[rows, cols] if with_confidence else None)
