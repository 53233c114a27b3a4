"""The downstream task that scores a pose distribution: a small pure-torch category segmentation net, its
mIoU, and the labelled target set it is scored on (a bake/COCO folder or a generated scene).

Images and label maps are small and fixed-size (``SIZE``): a distribution is scored by training a fresh net
on a handful of views, many times, on the CPU.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..errors import NeuralLabelError

#: (width, height) of every image the task sees
SIZE = (64, 48)


@dataclass(frozen=True)
class TaskSet:
    """Images (N, H, W, 3) float32 in [0, 1] and class maps (N, H, W) int64 (0 = background, k = the k-th
    category of ``category_ids``)."""

    images: np.ndarray
    classes: np.ndarray
    category_ids: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.images)


def class_map(category_map: np.ndarray, category_ids: tuple[int, ...]) -> np.ndarray:
    """uint16 category ids -> class indices (unknown ids and 0 -> background)."""
    lut = {cid: k + 1 for k, cid in enumerate(category_ids)}
    out = np.zeros(category_map.shape, dtype=np.int64)
    for cid, k in lut.items():
        out[category_map == cid] = k
    return out


def resize_pair(image: np.ndarray, category_map: np.ndarray, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    image = cv2.resize(np.asarray(image, dtype=np.float32), size, interpolation=cv2.INTER_AREA)
    labels = cv2.resize(np.asarray(category_map, dtype=np.uint16), size, interpolation=cv2.INTER_NEAREST)
    return image, labels


def _rgb01(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[..., :3]
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype, 1.0)
    return image.astype(np.float32) / scale


def load_target(path: Path, category_ids: tuple[int, ...], size=SIZE, limit: Optional[int] = None,
                split: str = "test") -> TaskSet:
    """The target set at ``path``: a generated scene (``gt/objects.json``: its ``split``, else every frame), or
    a bake / COCO folder (``coco/annotations.json`` or ``annotations.json``). A category not in
    ``category_ids`` (the spec's) is an error naming ``target``."""
    path = Path(path)
    if (path / "gt" / "objects.json").is_file():
        return _generated_target(path, category_ids, size, limit, split)
    for candidate in (path / "coco" / "annotations.json", path / "annotations.json", path):
        if candidate.is_file():
            return _coco_target(candidate, category_ids, size, limit)
    raise NeuralLabelError(f"{path}: not a labelled dataset (no coco/annotations.json, annotations.json or "
                           f"gt/objects.json)", field="target")


def _check_categories(found: set[int], category_ids: tuple[int, ...], where: Path) -> None:
    unknown = sorted(found - set(category_ids))
    if unknown:
        raise NeuralLabelError(f"{where}: category {unknown[0]} is not in the spec (its categories: "
                               f"{', '.join(map(str, category_ids))})", field="target")


def _generated_target(path: Path, category_ids, size, limit, split: str) -> TaskSet:
    from PIL import Image

    from ..data.dataset import load_dataset
    from ..data.truth import load_scene_truth

    truth = load_scene_truth(path)
    _check_categories({o.category_id for o in truth.objects}, category_ids, path)
    category_of = {o.instance_id: o.category_id for o in truth.objects}
    dataset = load_dataset(truth.transforms_path)
    frames = dataset.split(split) or dataset.frames
    images, classes = [], []
    for frame in frames[:limit]:
        instance = truth.instance_ids(frame.index)
        category = np.zeros(instance.shape, dtype=np.uint16)
        for iid, cid in category_of.items():
            category[instance == iid] = cid
        image, labels = resize_pair(_rgb01(np.array(Image.open(frame.image_path))), category, size)
        images.append(image)
        classes.append(class_map(labels, category_ids))
    return TaskSet(np.stack(images), np.stack(classes), tuple(category_ids))


def _coco_target(path: Path, category_ids, size, limit) -> TaskSet:
    from PIL import Image
    from pycocotools import mask as mask_utils

    coco = json.loads(path.read_text())
    _check_categories({c["id"] for c in coco.get("categories", [])}, category_ids, path)
    root = Path(coco.get("info", {}).get("image_root") or path.parent)
    by_image: dict[int, list] = {}
    for ann in coco.get("annotations", []):
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, classes = [], []
    for image in coco["images"][:limit]:
        h, w = image["height"], image["width"]
        category = np.zeros((h, w), dtype=np.uint16)
        for ann in sorted(by_image.get(image["id"], []), key=lambda a: -a.get("area", 0)):  # small ones on top
            seg = ann["segmentation"]
            if isinstance(seg, list):
                seg = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                seg = mask_utils.frPyObjects(seg, h, w)
            category[mask_utils.decode(seg) > 0] = ann["category_id"]
        file = _image_file(path, root, image)
        image_rgb, labels = resize_pair(_rgb01(np.array(Image.open(file))), category, size)
        images.append(image_rgb)
        classes.append(class_map(labels, category_ids))
    if not images:
        raise NeuralLabelError(f"{path}: no images", field="target")
    return TaskSet(np.stack(images), np.stack(classes), tuple(category_ids))


def _image_file(annotations: Path, root: Path, image: dict) -> Path:
    """A COCO image's file: under the image root, or (a synthetic view of a synth bake) its BOP render."""
    file = root / image["file_name"]
    if file.is_file():
        return file
    bake = annotations.parent.parent
    for scene in sorted((bake / "bop" / "train").glob("[0-9]*")) if (bake / "bop").is_dir() else []:
        render = scene / "rgb" / f"{image['id']:06d}.png"
        if render.is_file():
            return render
    raise NeuralLabelError(f"{annotations}: image {image['file_name']!r} not found", field="target")


class SegNet(nn.Module):
    """A small fully convolutional net (dilated convolutions: a wide view at full resolution)."""

    def __init__(self, classes: int, width: int = 16) -> None:
        super().__init__()
        layers, channels = [], 3
        for dilation in (1, 2, 4, 8):
            layers += [nn.Conv2d(channels, width, 3, padding=dilation, dilation=dilation), nn.ReLU()]
            channels = width
        layers.append(nn.Conv2d(width, classes, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread inside, restored after: the net is tiny, and intra-op threads only contend (on a
    shared 2-core machine one training ran 30x slower on two threads than on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _tensor(images: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)


def train_segmenter(data: TaskSet, *, steps: int = 150, seed: int = 0, lr: float = 1e-2,
                    batch: int = 8) -> SegNet:
    """A fresh net trained on ``data`` (seeded: the same data gives the same net)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = SegNet(len(data.category_ids) + 1)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all, y_all = _tensor(data.images), torch.as_tensor(data.classes)
    for _ in range(steps):
        pick = torch.randint(0, len(data), (min(batch, len(data)),), generator=gen)
        loss = nn.functional.cross_entropy(net(x_all[pick]), y_all[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net


@torch.no_grad()
def predict(net: SegNet, images: np.ndarray) -> np.ndarray:
    return net(_tensor(images)).argmax(dim=1).numpy()


def miou(pred: np.ndarray, truth: np.ndarray, classes: int) -> float:
    """Mean IoU over the classes (background included) that occur in the truth or the prediction."""
    ious = []
    for k in range(classes):
        p, t = pred == k, truth == k
        union = np.count_nonzero(p | t)
        if union:
            ious.append(np.count_nonzero(p & t) / union)
    return float(np.mean(ious)) if ious else 1.0


def _flat_grad(loss: torch.Tensor, params: list) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


def view_values(train: TaskSet, target: TaskSet, *, steps: int = 150, seed: int = 0, lr: float = 1e-2,
                checkpoints: int = 3) -> tuple[np.ndarray, float]:
    """How much each training view lowers the target loss, and the target mIoU of the net trained on all.

    The value of view i is -dL_target/dw_i for a per-view weight w_i on its training loss, approximated to
    first order along the training run (second-order terms dropped, as TracIn does): one SGD step of size
    ``lr`` changes L_target by -lr * <grad L_target, grad loss_i>, summed at ``checkpoints`` evenly spaced
    points of the run. Neural-Sim instead solves the implicit bilevel gradient (a Hessian-inverse product)."""
    with one_thread():
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = SegNet(len(train.category_ids) + 1)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        params = list(net.parameters())
        x_all, y_all = _tensor(train.images), torch.as_tensor(train.classes)
        x_t, y_t = _tensor(target.images), torch.as_tensor(target.classes)
        marks = {int(round(steps * (k + 1) / checkpoints)) for k in range(checkpoints)}
        values = np.zeros(len(train))
        for step in range(1, steps + 1):
            pick = torch.randint(0, len(train), (min(8, len(train)),), generator=gen)
            loss = nn.functional.cross_entropy(net(x_all[pick]), y_all[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step in marks:
                g_target = _flat_grad(nn.functional.cross_entropy(net(x_t), y_t), params)
                for i in range(len(train)):
                    g_i = _flat_grad(nn.functional.cross_entropy(net(x_all[i:i + 1]), y_all[i:i + 1]), params)
                    values[i] += lr * float(g_target @ g_i)
        reward = miou(predict(net, target.images), target.classes, len(target.category_ids) + 1)
    return values, reward


def score(train: TaskSet, target: TaskSet, *, steps: int = 150, seed: int = 0) -> float:
    """The target mIoU of a net trained on ``train``."""
    with one_thread():
        net = train_segmenter(train, steps=steps, seed=seed)
        return miou(predict(net, target.images), target.classes, len(target.category_ids) + 1)
