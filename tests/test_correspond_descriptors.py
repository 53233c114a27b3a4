"""The descriptor example learns from correspondences: on a textured image and its shifted copy, a briefly
trained U-Net finds true matches far better than an untrained one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurallabel.core.correspond.descriptors import UNet, best_match, don_loss, train
from neurallabel.core.correspond.metrics import endpoint_errors, pck


def textured_pair(shift=(6, 3), size=(40, 48), seed=0):
    rng = np.random.default_rng(seed)
    big = rng.random((size[0] // 4 + 6, size[1] // 4 + 6, 3)).repeat(4, 0).repeat(4, 1).astype(np.float32)
    big = big + 0.3 * rng.random(big.shape).astype(np.float32)
    a = big[12:12 + size[0], 12:12 + size[1]] / 1.3
    dx, dy = shift
    b = big[12 - dy:12 - dy + size[0], 12 - dx:12 - dx + size[1]] / 1.3  # A's (x, y) is B's (x + dx, y + dy)
    rows, cols = np.mgrid[4:size[0] - 8, 4:size[1] - 10]
    uv_a = np.stack([cols.ravel(), rows.ravel()], 1).astype(np.float64)
    b = np.ascontiguousarray(b[..., [1, 2, 0]])  # other colours: matching raw colour fails, structure must be learnt
    return a, b, uv_a, uv_a + np.array(shift, dtype=np.float64)


def test_don_loss_has_hard_negative_scaling():
    desc = torch.zeros(2, 4, 10, 10)
    uv = torch.tensor([[2.0, 2.0], [7.0, 7.0]])
    loss = don_loss(desc[0], desc[1], uv, uv, torch.Generator().manual_seed(0))
    assert abs(float(loss) - 0.25) < 1e-6  # identical descriptors: every non-match is hard, mean (0.5)^2


@pytest.fixture
def one_thread():
    """Small convolutions run faster on one thread than fighting over a busy machine's cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_trained_descriptors_match_better_than_untrained(one_thread):
    a, b, uv_a, uv_b = textured_pair()
    net = train([a, b], [(0, 1, uv_a, uv_b)], steps=60, dim=4, seed=0)
    torch.manual_seed(0)
    untrained = UNet(4).eval()
    trained_pck = pck(endpoint_errors(best_match(net, a, b, uv_a), uv_b), 3)
    untrained_pck = pck(endpoint_errors(best_match(untrained, a, b, uv_a), uv_b), 3)
    assert trained_pck > 0.5 and trained_pck > untrained_pck + 0.3
