"""Volume rendering of a :class:`~..field.model.Field`.

The pieces live in modules by what they are: :mod:`.samples` (packed :class:`RaySamples`), :mod:`.march`
(occupancy-grid marching on CPU or with nerfacc), :mod:`.volrend` (weights, compositing, median distance)
and :mod:`.views` (rays, cameras and a dataset's views).

Outputs per ray: ``rgb``, ``opacity``, ``distance`` (expected distance of the surface, i.e. the weighted
mean of sample distances normalised by opacity; ``inf`` where a ray meets no density), ``median_distance``
(where the accumulated weight reaches half the opacity, interpolated inside the sample), and optionally the
packed samples ``ray_indices``, ``t_starts``, ``t_ends``, ``weights`` (sorted by ray, then distance).
"""
