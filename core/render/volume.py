"""Volume rendering of a :class:`~..field.model.Field` (kept as the import path callers use).

The pieces live in modules by what they are: :mod:`.samples` (packed :class:`RaySamples`), :mod:`.march`
(occupancy-grid marching on CPU or with nerfacc), :mod:`.volrend` (weights, compositing, median distance)
and :mod:`.views` (rays, cameras and a dataset's views).

Outputs per ray: ``rgb``, ``opacity``, ``distance`` (expected distance of the surface, i.e. the weighted
mean of sample distances normalised by opacity; ``inf`` where a ray meets no density), ``median_distance``
(where the accumulated weight reaches half the opacity, interpolated inside the sample), and optionally the
packed samples ``ray_indices``, ``t_starts``, ``t_ends``, ``weights`` (sorted by ray, then distance).
"""

from __future__ import annotations

from .march import march, march_cpu, march_nerfacc, ray_box
from .samples import RaySamples
from .views import render_frame, render_rays, render_views
from .volrend import composite, median_distance, packed_cumsum, weights_from_density

__all__ = ["RaySamples", "composite", "march", "march_cpu", "march_nerfacc", "median_distance",
           "packed_cumsum", "ray_box", "render_frame", "render_rays", "render_views", "weights_from_density"]
