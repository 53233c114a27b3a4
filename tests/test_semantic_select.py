"""Semantic head pieces without a field (issue 16): metrics, label images, pool, strategies, state, training on
synthetic cached rays."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.io.atomic import png_bytes, write_bytes
from neurallabel.core.semantic.labels import VOID, class_table, load_labels, ray_targets
from neurallabel.core.semantic.metrics import miou
from neurallabel.core.semantic.pool import build_pool, parse_granularity, rays_in_rects
from neurallabel.core.semantic.rays import RayCache, load_cache, save_cache
from neurallabel.core.semantic.render import predict
from neurallabel.core.semantic.state import add_round, load_state, round_rng
from neurallabel.core.semantic.strategies import SCORE_STRIDE, score_pool, scored_rays, select_units, surface_cells
from neurallabel.core.semantic.train import HeadTrainOptions, train_head
from neurallabel.core.semantic.workflow import select_next

W, H = 8, 6


def frame(index: int, width: int = W, height: int = H):
    return SimpleNamespace(index=index, name=f"img{index}", intrinsics=SimpleNamespace(width=width, height=height),
                           image_path=SimpleNamespace(name=f"img{index}.png"))


def synthetic_cache(n_frames: int = 2, surface=None) -> RayCache:
    """Every pixel of ``n_frames`` WxH frames; one sample per ray at the surface point; by default frame f's
    pixel (x, y) sees the world point (x, y, 0) (every frame sees the same surface)."""
    ys, xs = np.mgrid[0:H, 0:W]
    frames = np.repeat(np.arange(n_frames), W * H)
    x, y = np.tile(xs.ravel(), n_frames), np.tile(ys.ravel(), n_frames)
    if surface is None:
        surface = np.stack([x, y, np.zeros_like(x)], axis=-1).astype(np.float32)
    coords = torch.from_numpy(np.nan_to_num(surface / 8.0 - 0.5, nan=0.0)).float()
    n = len(frames)
    return RayCache(frames.astype(np.int64), x.astype(np.int32), y.astype(np.int32), surface.astype(np.float32),
                    torch.arange(n), coords, torch.ones(n))


def test_cache_keeps_the_heaviest_samples_of_each_ray_grouped_by_ray():
    from neurallabel.core.semantic.rays import MAX_SAMPLES, heaviest

    rays = torch.tensor([0] * 12 + [2, 2])
    weights = torch.tensor([0.001] + [0.05 * i for i in range(1, 12)] + [0.3, 0.005])
    keep = heaviest(rays, weights, 3)
    assert rays[keep].tolist() == [0] * MAX_SAMPLES + [2]  # ray 2's 0.005 is below MIN_WEIGHT
    assert sorted(weights[keep][:MAX_SAMPLES].tolist(), reverse=True) == pytest.approx([0.05 * i for i in range(11, 3, -1)])
    cache = synthetic_cache(1)
    part = cache.subset(np.array([3, 1]))  # any order: the rays come in the order asked
    assert part.x.tolist() == [3, 1] and part.ray_indices.tolist() == [0, 1]
    assert part.coords[:, 0].tolist() == pytest.approx([3 / 8 - 0.5, 1 / 8 - 0.5])


BOX = np.array([0.0, 0.0, -1.0, 8.0, 8.0, 1.0])


def test_miou_is_the_nan_mean_over_classes_present_in_the_truth():
    truth = np.array([0, 0, 1, 1])
    predicted = np.array([0, 1, 1, 1])
    # class 0: 1 / 2; class 1: 2 / 3; class 2 (absent from the truth) does not count, even predicted
    assert miou(truth, predicted, [0, 1, 2]) == pytest.approx((0.5 + 2 / 3) / 2)
    assert miou(np.array([0, 1]), np.array([0, 2]), [0, 1, 2]) == pytest.approx(0.5)
    assert miou(np.array([0, VOID]), np.array([0, 1]), [0, 1]) == pytest.approx(1.0)  # void truth is ignored
    assert miou(np.array([0, 1]), np.array([0, VOID]), [0, 1]) == pytest.approx(0.5)  # void prediction is a miss


def write_label(path, ids):
    write_bytes(path, png_bytes(np.asarray(ids, dtype=np.uint16)))


def test_label_images_are_checked_and_named_by_frame_index_or_photo(tmp_path):
    frames = [frame(0), frame(1)]
    ids = np.full((H, W), VOID)
    ids[0, 0], ids[1, 1] = 2, 5
    write_label(tmp_path / "000000.png", ids)
    write_label(tmp_path / "img1.png", np.full((H, W), VOID))
    labels = load_labels(tmp_path, frames)
    assert sorted(labels) == [0, 1] and labels[0][1, 1] == 5
    assert class_table(labels) == ([2, 5], [])
    assert class_table(labels, [2, 5, 7]) == ([2, 5, 7], [7])  # 7 has no labelled pixel: the caller warns
    with pytest.raises(NeuralLabelError, match="000000.png: category ids \\[5\\]"):
        load_labels(tmp_path, frames, [0, 2])
    write_label(tmp_path / "000001.png", np.zeros((H + 1, W)))
    with pytest.raises(NeuralLabelError, match="000001.png: the label image is 8x7 but frame 1 is 8x6"):
        load_labels(tmp_path, frames)
    (tmp_path / "000001.png").unlink()
    write_label(tmp_path / "000009.png", np.zeros((H, W)))
    with pytest.raises(NeuralLabelError, match="000009.png: no frame"):
        load_labels(tmp_path, frames)
    cache = synthetic_cache(1)
    targets = ray_targets(cache, {0: ids}, [2, 5])
    assert targets[0] == 0 and targets[W + 1] == 1 and (targets >= 0).sum() == 2


def test_patch_pool_covers_each_frame_and_leaves_out_pixels_without_surface():
    surface = synthetic_cache(1).surface.copy()
    surface[:, :][np.arange(W * H) % W >= 4] = np.nan  # the right half of the image sees nothing
    cache = synthetic_cache(1, surface)
    pool = build_pool(cache, [frame(0)], parse_granularity("patch:3"))
    rects = sorted((int(x), int(y), int(w), int(h)) for x, y, w, h in zip(pool.x, pool.y, pool.w, pool.h))
    # patches with x in {0, 3} (x=3 still holds surface at x=3), rows 0..2 and 3..5; x=6 has no surface
    assert rects == [(0, 0, 3, 3), (0, 3, 3, 3), (3, 0, 3, 3), (3, 3, 3, 3)]
    assert pool.cost.tolist() == [9, 9, 9, 9]
    pixels = build_pool(cache, [frame(0)], parse_granularity("pixel"))
    assert pixels.size == 4 * H and np.all(pixels.x < 4)
    image = build_pool(cache, [frame(0)], parse_granularity("image"))
    assert image.size == 1 and (image.w[0], image.h[0]) == (W, H)
    edge = build_pool(synthetic_cache(1), [frame(0)], parse_granularity("patch:5"))
    assert sorted(zip(edge.w.tolist(), edge.h.tolist())) == [(3, 1), (3, 5), (5, 1), (5, 5)]  # clipped at the border
    with pytest.raises(NeuralLabelError, match="granularity"):
        parse_granularity("patch:0")


def test_geometry_round_does_not_pick_the_same_surface_from_another_view():
    cache = synthetic_cache(2)  # both frames see exactly the same surface
    pool = build_pool(cache, [frame(0), frame(1)], parse_granularity("patch:4"))
    cells = surface_cells(cache, BOX, resolution=8)
    labelled = np.zeros(cache.n_rays, dtype=bool)
    chosen = select_units(pool, cache, "geometry", 2 * 16 + 2 * 8, labelled=labelled, cells=cells,
                          rng=np.random.default_rng(0))
    rects = [(int(pool.x[u]), int(pool.y[u])) for u in chosen.units]
    assert len(rects) == 4 and len(set(rects)) == 4  # four different places, never one place in both views
    # random may well pick the same place twice; with the same seed it picks the same units
    again = [select_units(pool, cache, "random", 64, labelled=labelled, cells=cells, rng=np.random.default_rng(3)).units
             for _ in range(2)]
    assert again[0] == again[1]
    # what another view has labelled already is not novel any more
    labelled = rays_in_rects(cache, [{"frame": 0, "x": 0, "y": 0, "w": 4, "h": 4}])
    first = select_units(pool, cache, "geometry", 1, labelled=labelled, cells=cells, rng=np.random.default_rng(0))
    assert (int(pool.x[first.units[0]]), int(pool.y[first.units[0]])) != (0, 0)


def test_uncertainty_orders_units_and_a_budget_beyond_the_pool_takes_the_pool():
    cache = synthetic_cache(1)
    pool = build_pool(cache, [frame(0)], parse_granularity("pixel"))
    entropy = np.zeros(cache.n_rays)
    entropy[5] = 0.9
    entropy[7] = 0.5
    labelled = np.zeros(cache.n_rays, dtype=bool)
    cells = surface_cells(cache, BOX, resolution=8)
    top = select_units(pool, cache, "entropy", 2, labelled=labelled, cells=cells, rng=np.random.default_rng(0),
                       entropy=entropy, margin=1 - entropy)
    assert [int(pool.x[u]) for u in top.units] == [5, 7]
    margin = select_units(pool, cache, "margin", 1, labelled=labelled, cells=cells, rng=np.random.default_rng(0),
                          entropy=entropy, margin=1 - entropy)
    assert int(pool.x[margin.units[0]]) == 5
    everything = select_units(pool, cache, "geometry", 10 ** 6, labelled=labelled, cells=cells,
                              rng=np.random.default_rng(0))
    assert everything.pool_exhausted and everything.cost == W * H and len(set(everything.units)) == W * H


def test_selection_state_resumes_and_refuses_other_settings(tmp_path):
    path = tmp_path / "s.json"
    state = load_state(path, "abc", "geometry", "patch:8", 4)
    draw = round_rng(state).random()
    assert round_rng(load_state(path, "abc", "geometry", "patch:8", 4)).random() == draw  # no round written: same
    add_round(path, state, 64, 64, [{"frame": 0, "image": "a.png", "x": 0, "y": 0, "w": 8, "h": 8}])
    resumed = load_state(path, "abc", "geometry", "patch:8", 4)
    assert len(resumed["rounds"]) == 1 and round_rng(resumed).random() != draw
    with pytest.raises(NeuralLabelError, match="field_fingerprint"):
        load_state(path, "other", "geometry", "patch:8", 4)


def test_head_learns_labels_and_spreads_them_in_space():
    cache = synthetic_cache(1)
    truth = (cache.x >= 4).astype(np.int64)  # class 1 on the right half of the surface
    target = np.full(cache.n_rays, -1)
    for x in (0, 1, 6, 7):  # label two columns on each side only
        target[cache.x == x] = truth[cache.x == x]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a shared 2-core machine fight over the cores
    try:
        head = train_head(cache, target, [3, 9], HeadTrainOptions(steps=80))
    finally:
        torch.set_num_threads(threads)
    prediction = predict(head, cache)
    labelled = target >= 0
    assert np.all(prediction.category[labelled] == np.array([3, 9])[target[labelled]])
    # unlabelled columns 2..5 between the labelled ones: the boundary lands within a column of the truth's
    assert miou(np.array([3, 9])[truth], prediction.category, [3, 9]) >= 0.75
    assert prediction.probabilities.shape == (cache.n_rays, 2)
    assert np.all((prediction.entropy >= 0) & (prediction.entropy <= 1))
    assert np.all(prediction.margin[cache.x == 0] > 0.5)


def test_patches_are_scored_on_a_subsample_and_unscored_rays_do_not_count():
    cache = synthetic_cache(1)
    patches = build_pool(cache, [frame(0)], parse_granularity("patch:4"))
    rays = scored_rays(cache, patches)
    assert len(rays) == cache.n_rays // SCORE_STRIDE ** 2
    assert np.all(cache.x[rays] % SCORE_STRIDE == 0) and np.all(cache.y[rays] % SCORE_STRIDE == 0)
    assert len(scored_rays(cache, build_pool(cache, [frame(0)], parse_granularity("pixel")))) == cache.n_rays
    head = train_head(cache, (cache.x >= 4).astype(np.int64), [0, 1], HeadTrainOptions(steps=5))
    entropy, margin = score_pool(head, cache, patches)
    assert np.all(np.isfinite(entropy[rays])) and np.isnan(entropy).sum() == cache.n_rays - len(rays)
    assert np.all(np.isfinite(margin[rays]))
    # an unscored (NaN) pixel is left out of its unit's mean: a patch whose scored pixels are certain stays last
    entropy = np.full(cache.n_rays, np.nan)
    entropy[rays] = np.where(cache.x[rays] < 4, 0.9, 0.1)
    labelled = np.zeros(cache.n_rays, dtype=bool)
    order = select_units(patches, cache, "entropy", 10 ** 6, labelled=labelled, cells=surface_cells(cache, BOX, 8),
                         rng=np.random.default_rng(0), entropy=entropy)
    assert [int(patches.x[u]) for u in order.units] == [0, 0, 4, 4]  # two rows of patches (H = 6)


def test_select_reuses_the_cached_rays_of_the_same_field_and_frames(tmp_path):
    cache, frames = synthetic_cache(2), [frame(0), frame(1)]
    key = {"field_sha256": "abc", "downscale": 1.0}
    path = tmp_path / "s.json.rays.pt"
    save_cache(path, cache, dict(key, frames=[[0, W, H], [1, W, H]]))
    loaded = load_cache(path, dict(key, frames=[[0, W, H], [1, W, H]]))
    assert np.array_equal(loaded.surface, cache.surface) and torch.equal(loaded.coords, cache.coords)
    assert load_cache(path, dict(key, downscale=2.0, frames=[[0, W, H], [1, W, H]])) is None  # stale: recomputed
    # the field is never marched: with no field to march (None) the round still runs from the cached rays
    field = SimpleNamespace(config=SimpleNamespace(roi_aabb=BOX.tolist()))
    result = select_next(field, "fp", frames, budget=16, granularity="patch:4", strategy="geometry", seed=0,
                         state_path=tmp_path / "s.json", out=tmp_path / "sel.json", ray_cache=path,
                         ray_cache_key=key)
    assert result.cost >= 16 and result.round == 0 and (tmp_path / "sel.json").is_file()
