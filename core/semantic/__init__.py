"""A semantic head on a frozen field, and active selection of what to label next (issue 16).

- :mod:`.rays`: the frozen field's per-ray samples and weights, cached once per pixel set;
- :mod:`.head`: the position-only head (low-res feature grid + small MLP), its checkpoint;
- :mod:`.labels`: label images (uint16 category PNGs, 0xFFFF = unlabelled) read and checked;
- :mod:`.train`: cross-entropy training of the head on the cached labelled rays;
- :mod:`.render`: category map, probabilities, entropy and margin per pixel;
- :mod:`.pool`, :mod:`.strategies`, :mod:`.state`: units to label, how to choose them, the rounds so far;
- :mod:`.metrics`: mIoU (nan-mean over the classes present in the truth).
"""
