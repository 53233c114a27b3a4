"""A dense-descriptor example: a small U-Net trained on correspondences with Dense Object Nets' pixelwise
contrastive loss, evaluated by best match. It exists to show that the correspondences teach something; it is
CPU-sized, with no pretrained weights.

Loss (Florence et al. 2018): matches pull their descriptors together (mean squared distance); non-matches (a
random pixel of B far from the true match) push apart up to ``margin`` (0.5), hinge squared, summed and divided
by the number of non-matches still inside the margin (hard-negative scaling: easy negatives do not dilute it).
Pixels are OpenCV's (the correspondences' convention).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

MARGIN = 0.5
NONMATCH_MIN_PX = 5.0  # a non-match lies at least this far from the true match


class UNet(nn.Module):
    """Two down- and up-sampling levels with skips; (B, 3, H, W) in [0, 1] -> (B, dim, H, W)."""

    def __init__(self, dim: int = 8, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU())

        self.down0, self.down1, self.down2 = block(3, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.up1, self.up0 = block(6 * width, 2 * width), block(3 * width, width)
        self.head = nn.Conv2d(width, dim, 1)

    def forward(self, image: Tensor) -> Tensor:
        x0 = self.down0(image)
        x1 = self.down1(F.max_pool2d(x0, 2))
        x2 = self.down2(F.max_pool2d(x1, 2))
        y1 = self.up1(torch.cat([F.interpolate(x2, size=x1.shape[-2:], mode="bilinear", align_corners=False), x1], 1))
        y0 = self.up0(torch.cat([F.interpolate(y1, size=x0.shape[-2:], mode="bilinear", align_corners=False), x0], 1))
        return self.head(y0)


def sample(descriptors: Tensor, uv: Tensor) -> Tensor:
    """(N, dim) descriptors of one image (dim, H, W) at OpenCV pixels ``uv`` (N, 2), bilinear."""
    _, h, w = descriptors.shape
    grid = torch.stack([(uv[:, 0] + 0.5) / w * 2 - 1, (uv[:, 1] + 0.5) / h * 2 - 1], dim=-1)
    out = F.grid_sample(descriptors[None], grid[None, None].to(descriptors.dtype), mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].t()


def don_loss(desc_a: Tensor, desc_b: Tensor, uv_a: Tensor, uv_b: Tensor, generator: torch.Generator,
             *, nonmatches_per_match: int = 4, margin: float = MARGIN) -> Tensor:
    """DON's pixelwise contrastive loss of one image pair's matches (uv_a[i] <-> uv_b[i])."""
    _, h, w = desc_b.shape
    da, db = sample(desc_a, uv_a), sample(desc_b, uv_b)
    match = ((da - db) ** 2).sum(-1).mean()
    n = uv_a.shape[0] * nonmatches_per_match
    random = torch.stack([torch.rand(n, generator=generator) * w - 0.5, torch.rand(n, generator=generator) * h - 0.5], -1)
    anchors = da.repeat(nonmatches_per_match, 1)
    far = (random - uv_b.repeat(nonmatches_per_match, 1)).norm(dim=-1) >= NONMATCH_MIN_PX
    distance = (anchors[far] - sample(desc_b, random[far])).norm(dim=-1)
    hinge = F.relu(margin - distance) ** 2
    hard = int((hinge > 0).sum())
    return match + hinge.sum() / max(hard, 1)


def train(images: Sequence[np.ndarray], matches: Sequence[tuple[int, int, np.ndarray, np.ndarray]], *,
          steps: int = 200, matches_per_step: int = 256, dim: int = 8, lr: float = 3e-3, seed: int = 0) -> UNet:
    """A :class:`UNet` trained on ``matches`` [(image index a, b, uv_a (N, 2), uv_b (N, 2))] of ``images``
    (H, W, 3 floats in [0, 1]); one pair per step, deterministic for the seed (CPU)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    net = UNet(dim)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    tensors = [torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float() for im in images]
    usable = [m for m in matches if len(m[2])]
    for step in range(steps):
        a, b, uv_a, uv_b = usable[int(torch.randint(len(usable), (1,), generator=generator))]
        pick = torch.randperm(len(uv_a), generator=generator)[:matches_per_step]
        desc = net(torch.stack([tensors[a], tensors[b]]))
        loss = don_loss(desc[0], desc[1], torch.from_numpy(uv_a).float()[pick], torch.from_numpy(uv_b).float()[pick],
                        generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return net.eval()


@torch.no_grad()
def best_match(net: UNet, image_a: np.ndarray, image_b: np.ndarray, uv_a: np.ndarray,
               chunk: int = 1024) -> np.ndarray:
    """(N, 2) the OpenCV pixel of B whose descriptor is nearest to A's at ``uv_a`` (N, 2)."""
    pair = torch.stack([torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))).float()
                        for im in (image_a, image_b)])
    desc = net(pair)
    queries = sample(desc[0], torch.from_numpy(np.asarray(uv_a, np.float64)).float())
    dim, h, w = desc[1].shape
    flat = desc[1].reshape(dim, -1).t()
    best = torch.cat([torch.cdist(queries[i:i + chunk], flat).argmin(dim=1) for i in range(0, len(queries), chunk)])
    return np.stack([(best % w).numpy(), (best // w).numpy()], axis=1).astype(np.float64)


def load_rgb(path, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] of a photo (resized to ``size`` = (W, H) when given)."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        if size is not None and image.size != size:
            image = image.resize(size, Image.BILINEAR)
        return np.asarray(image, dtype=np.float32) / 255.0
