"""Dense correspondences between views, drawn from a field's depth distribution (NeRF-Supervision,
Yen-Chen et al., arXiv 2203.01913, Sec. III-C to III-E).

- :mod:`.distribution`: the per-ray depth distribution (packed intervals, normalised weights, opacity) and
  :func:`~.distribution.sample_depths` (inverse-CDF sampling, mean, median, mode);
- :mod:`.reproject`: pixels -> rays -> points -> pixels between views, with lens distortion both ways;
- :mod:`.roundtrip`: one pair's correspondences, the round-trip filter (sampled arm) and DON's depth check
  (single-depth arms), with a reason per query;
- :mod:`.pairs`: which view pairs and which query pixels;
- :mod:`.photometric`: a colour gate between the two photos (catches wrong but consistent field depths);
- :mod:`.metrics`: PCK (strict ``<``), AEPE, resolution-free PCK;
- :mod:`.truth`: exact correspondences and pixel classes of a generated scene (``make_scene.py``);
- :mod:`.writer`: the on-disk layout (``DIR/correspondences/``), one atomic file per pair.
"""
