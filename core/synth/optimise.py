"""Fitting the pose distribution: to a downstream task on a target set (``reinforce``: a score-function
estimator; ``gumbel``: a relaxed, differentiable path), or to the poses of target cameras
(``--fit-to-poses``, the practical baseline).

``reinforce`` (REINFORCE): each iteration draws ``views_per_iteration`` views from softmax(logits) (Tool 1),
renders and labels them in memory, and gives each view an advantage from the target mIoU of fresh
segmentation nets trained on parts of the iteration's views; the logits follow Adam on
-sum(advantage * log p(bin)). How a view's advantage is found (``credit``):

- ``groups``: the views are split into ``groups``; a net per group; a group's reward minus the mean of the
  other groups' (leave-one-out, unbiased) is the advantage of every view in it.
- ``subsets``: ``subsets`` nets, each trained on a random half of the views, in complementary pairs (every
  view is in exactly half of them); a view's advantage is the mean reward of the nets that saw it minus the
  mean of those that did not: its own marginal value to the task, not its group's. The same rendered views,
  more nets.

``gumbel`` (Neural-Sim's Tool 1 + a first-order bilevel gradient): each iteration draws the views on the no-grad
lattice and logs the noise, then replays the same noise with gradients ("twice forward, once backward"): each
view's training loss carries the straight-through weight of its bin in the Gumbel-softmax (1 in the forward
pass, the relaxed softmax's gradient in the backward pass, at temperature ``relax_tau``: at the sampling
tau = 0.1 the relaxed weights are one-hot to float precision and pass no gradient). One net is trained on all
the views; d L_target / d weight of each view is taken to first order along its training run
(:func:`.tasks.view_values`; the paper solves the implicit gradient with a Hessian-inverse product) and
centred over the iteration's views; the chain rule carries it to the logits (Adam). The renderer itself is
not differentiated: a view's pixels move with its in-bin offset, not with the logits, so the logits' gradient
flows only through the bin weights.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import NeuralLabelError
from ..geometry.transforms import Similarity
from ..progress import ProgressFn, report
from .distribution import Bins, Draws, gumbel_softmax, histogram_logits, log_prob, probabilities, sample
from .tasks import SIZE, TaskSet, class_map, load_target, score, view_values
from .views import RenderedQuery, SynthOptions, plan_distribution, synthetic_intrinsics, synthetic_views


class ViewSource:
    """Renders and labels the views of draws, in memory, at the task's size."""

    def __init__(self, spec, dataset, field, *, device: str = "cpu", size=SIZE) -> None:
        from ..labels.frame import LabelOptions
        from ..pipeline.bake import frame_labeler

        self.query = RenderedQuery(field, device=device)
        from ..io.meshes import load_mesh

        models = {o.instance_id: o.mesh if o.mesh is not None else load_mesh(o.mesh_path, what=f"object {o.name!r}")
                  for o in spec.objects if o.kind == "mesh"}
        # box objects without a model are labelled from the field's depth inside their box
        self.labeler = frame_labeler(spec, models, self.query, LabelOptions(), device=device)
        self.world_from_data = Similarity(spec.world_from_data)
        self.intrinsics = synthetic_intrinsics(dataset.frames[0].intrinsics, size)
        self.category_ids = tuple(sorted(spec.categories()))

    def views(self, draws: Draws, centre: np.ndarray) -> TaskSet:
        images, classes = [], []
        for view in synthetic_views(draws, centre, self.intrinsics, self.world_from_data).values():
            rgb = self.query.rgb(view)
            labels = self.labeler.label(view, full_depth=False, confidence=False, image=rgb)
            images.append(rgb.astype(np.float32) / 255.0)
            classes.append(class_map(labels.category, self.category_ids))
        return TaskSet(np.stack(images), np.stack(classes), self.category_ids)


def subset(data: TaskSet, keep: np.ndarray) -> TaskSet:
    return TaskSet(data.images[keep], data.classes[keep], data.category_ids)


@dataclasses.dataclass(frozen=True)
class OptimiseOptions:
    """REINFORCE's budget (iterations x views), its leave-one-out groups, the logits' Adam step, and the
    task's training steps per scored group."""

    iterations: int = 10
    views_per_iteration: int = 40
    groups: int = 4
    credit: str = "groups"  # reinforce: "groups" or "subsets" (see the module's docstring)
    subsets: int = 16  # credit "subsets": nets per iteration (even: complementary pairs)
    lr: float = 0.3
    task_steps: int = 150
    tau: float = 0.1
    seed: int = 0
    relax_tau: float = 1.0  # gumbel: the temperature of the relaxed weights' gradient


Surrogate = Callable[[torch.Tensor, Draws, TaskSet, int], tuple[torch.Tensor, np.ndarray]]


def _fit(render: Callable[[Draws], TaskSet], bins: Bins, logits0: np.ndarray, options: OptimiseOptions,
         progress: Optional[ProgressFn], surrogate: Surrogate) -> tuple[np.ndarray, list[dict]]:
    """Adam on the logits: each iteration draws views (Tool 1, no grad), renders them, and steps on the
    estimator's surrogate loss of (logits, draws, views, iteration), which also gives the iteration's rewards."""
    rng = np.random.default_rng(options.seed)
    logits = torch.tensor(np.asarray(logits0, dtype=np.float64), requires_grad=True)
    opt = torch.optim.Adam([logits], lr=options.lr)
    history = []
    for it in range(options.iterations):
        draws = sample(logits.detach().numpy(), bins, options.views_per_iteration, rng, options.tau)
        loss, rewards = surrogate(logits, draws, render(draws), it)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"iteration": it + 1, "rewards": [float(r) for r in rewards],
                        "mean_reward": float(np.mean(rewards)), "bins_drawn": [int(b) for b in draws.bins],
                        "probabilities": [float(p) for p in probabilities(logits.detach().numpy())]})
        report(progress, it + 1, options.iterations, "optimise")
    return logits.detach().numpy(), history


def reinforce(render: Callable[[Draws], TaskSet], target: TaskSet, bins: Bins, logits0: np.ndarray,
              options: OptimiseOptions = OptimiseOptions(), progress: Optional[ProgressFn] = None
              ) -> tuple[np.ndarray, list[dict]]:
    """The optimised logits and the history per iteration (probabilities, the nets' rewards)."""
    if options.credit not in CREDITS:
        raise NeuralLabelError(f"credit {options.credit!r}: choose from {', '.join(CREDITS)}", field="credit")
    n = options.views_per_iteration
    if options.credit == "subsets":
        masks_rng = np.random.default_rng([options.seed, 1])

        def parts(it):
            return half_subsets(n, max(2, options.subsets), masks_rng)
    else:
        groups = max(2, min(options.groups, n))
        group_masks = np.arange(n)[None, :] % groups == np.arange(groups)[:, None]

        def parts(it):
            return group_masks

    def surrogate(logits, draws, views, it):
        masks = parts(it)
        rewards = np.array([score(subset(views, m), target, steps=options.task_steps) for m in masks])
        advantage = torch.as_tensor(view_advantages(masks, rewards))
        return -(advantage * log_prob(logits, draws.bins)).mean(), rewards

    return _fit(render, bins, logits0, options, progress, surrogate)


CREDITS = ("groups", "subsets")


def half_subsets(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, n) bool: ``count // 2`` random halves of n views and their complements (every view in exactly
    half of the subsets, so each has nets with and without it)."""
    pairs = []
    for _ in range(max(1, count // 2)):
        mask = np.zeros(n, dtype=bool)
        mask[rng.permutation(n)[:n // 2]] = True
        pairs += [mask, ~mask]
    return np.array(pairs)


def view_advantages(masks: np.ndarray, rewards: np.ndarray) -> np.ndarray:
    """(n,) each view's advantage: the mean reward of the nets trained with it minus the mean of those trained
    without it (``masks``: (nets, n) which views each net saw). Disjoint groups give the leave-one-out baseline:
    a group's reward minus the mean of the others'."""
    masks = np.asarray(masks, dtype=bool)
    rewards = np.asarray(rewards, dtype=np.float64)
    with_view = (rewards[:, None] * masks).sum(0) / np.maximum(masks.sum(0), 1)
    without = (rewards[:, None] * ~masks).sum(0) / np.maximum((~masks).sum(0), 1)
    return with_view - without


def gumbel(render: Callable[[Draws], TaskSet], target: TaskSet, bins: Bins, logits0: np.ndarray,
           options: OptimiseOptions = OptimiseOptions(), progress: Optional[ProgressFn] = None
           ) -> tuple[np.ndarray, list[dict]]:
    """The optimised logits and the history per iteration (probabilities, the reward of the iteration's net)."""

    def surrogate(logits, draws, views, it):
        values, reward = view_values(views, target, steps=options.task_steps, seed=options.seed + it)
        weights = relaxed_weights(logits, draws, options.relax_tau)
        return -(weights * torch.as_tensor(values - values.mean())).sum(), np.array([reward])

    return _fit(render, bins, logits0, options, progress, surrogate)


def relaxed_weights(logits: torch.Tensor, draws: Draws, relax_tau: float) -> torch.Tensor:
    """(N,) each draw's straight-through weight of its bin: exactly 1, with the gradient of the Gumbel-softmax
    at ``relax_tau`` replayed from the draw's logged noise."""
    soft = gumbel_softmax(logits, torch.as_tensor(draws.gumbel_uniform, dtype=torch.float64), relax_tau)
    own = soft[torch.arange(len(draws.bins)), torch.as_tensor(draws.bins, dtype=torch.long)]
    return 1.0 + own - own.detach()


ESTIMATORS = {"reinforce": reinforce, "gumbel": gumbel}


def pose_coords(frames, world_from_data: Similarity, centre: np.ndarray) -> np.ndarray:
    """(N, 3) azimuth, elevation, distance of ``frames``' cameras around ``centre`` (world frame)."""
    from .poses import spherical

    origins = world_from_data.apply(np.array([f.cam_to_data[:3, 3] for f in frames]))
    return spherical(centre, origins)


def fitted_weights(spec, request, options: SynthOptions, *, device: str = "cpu",
                   progress: Optional[ProgressFn] = None, notice=None) -> tuple[SynthOptions, dict]:
    """``options`` with the logits fitted to ``request.fit_to_poses`` (the target cameras' histogram) or,
    with ``request.optimise``, to ``request.task`` on ``request.target``; and what psi.json records of it."""
    from ..data.dataset import load_dataset
    from ..pipeline.bake import load_checked_field

    dataset = load_dataset(spec.data_path)
    world_from_data = Similarity(spec.world_from_data)
    plan = plan_distribution(dataset, world_from_data, options)
    if request.fit_to_poses is not None:
        try:
            target = load_dataset(request.fit_to_poses)
        except NeuralLabelError as exc:
            raise NeuralLabelError(str(exc), field="fit_to_poses") from None
        coords = pose_coords(target.frames, world_from_data, plan.orbit.centre)
        logits = histogram_logits(coords, plan.bins)
        return dataclasses.replace(options, logits=tuple(logits)), {"fit_to_poses": str(request.fit_to_poses)}
    category_ids = tuple(sorted(spec.categories()))
    target = load_target(request.target, category_ids)
    source = ViewSource(spec, dataset, load_checked_field(spec, dataset, device).field, device=device)
    opt = OptimiseOptions(iterations=request.iterations, views_per_iteration=request.views_per_iteration,
                          tau=options.tau, seed=options.seed, credit=request.credit)
    estimator = ESTIMATORS[request.estimator]
    logits, history = estimator(lambda d: source.views(d, plan.orbit.centre), target, plan.bins, plan.logits,
                                opt, progress)
    extra = {"optimise": {"estimator": request.estimator, "task": request.task, "target": str(request.target),
                          "iterations": opt.iterations, "views_per_iteration": opt.views_per_iteration,
                          "credit": opt.credit, "groups": opt.groups, "subsets": opt.subsets, "lr": opt.lr,
                          "task_steps": opt.task_steps},
             "history": history}
    return dataclasses.replace(options, logits=tuple(logits)), extra
