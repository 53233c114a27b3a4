"""Synthetic views: labelled novel views rendered from the field, from a pose distribution over bins
(Neural-Sim, Ge et al. 2022) that can be optimised for a downstream task."""
