"""core.eval.labels: the label-accuracy evaluator, on masks and depths small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from neurallabel.core.eval.labels import box_iou, mask_iou, score_objects, summarize


def test_scores_by_hand() -> None:
    true_instance = np.zeros((4, 6), np.uint16)
    true_instance[0:2, 0:2] = 1  # object 1: 4 pixels
    true_instance[2:4, 3:6] = 2  # object 2: 6 pixels
    instance = true_instance.copy()
    instance[1, 2] = 1  # one pixel too many for object 1 -> IoU 4 / 5
    instance[3, 5] = 0  # one pixel missed of object 2 -> IoU 5 / 6
    true_z = np.full((4, 6), 2.0, np.float32)
    true_z[2, 3] = np.inf  # no true depth: not scored
    depth = true_z + np.float32(0.001)  # 1 mm too far everywhere ...
    depth[0, 0] = 2.004  # ... but 4 mm on one pixel
    source = depth.copy()
    source[0, 1] = np.nan  # the source found no surface at one pixel

    scores = score_objects(3, instance, true_instance, true_z, [1, 2, 9], depth=depth, source_depth=source)
    assert [s.instance_id for s in scores] == [1, 2]  # 9: in neither
    assert scores[0].visible_iou == pytest.approx(4 / 5) and scores[1].visible_iou == pytest.approx(5 / 6)
    assert scores[0].box_iou == pytest.approx(4 / 6)  # boxes 2x2 and 2x3
    assert len(scores[0].depth_error) == 4 and len(scores[1].depth_error) == 4  # 5 shared, one without depth

    pooled = summarize(scores)
    assert pooled["instances"] == 2 and pooled["visible_iou_min"] == pytest.approx(0.8)
    assert pooled["visible_iou_mean"] == pytest.approx((0.8 + 5 / 6) / 2)
    assert pooled["depth_error_mm"]["median"] == pytest.approx(1.0, abs=1e-3)
    assert pooled["depth_error_mm"]["no_depth_fraction"] == 0.0
    assert pooled["source_depth_error_mm"]["no_depth_fraction"] == pytest.approx(1 / 8)


def test_iou_edge_cases() -> None:
    empty = np.zeros((3, 3), bool)
    full = np.ones((3, 3), bool)
    assert np.isnan(mask_iou(empty, empty)) and mask_iou(full, empty) == 0.0
    assert box_iou(empty, empty) == 1.0 and box_iou(full, empty) == 0.0
    assert summarize([])["visible_iou_mean"] is None and summarize([])["depth_error_mm"] is None
