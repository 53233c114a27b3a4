"""Fitting the pose distribution (issue 17): the segmentation task and its mIoU, REINFORCE moving mass to the
bins whose views score best on the target, --fit-to-poses, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from neurallabel.core.errors import NeuralLabelError
from neurallabel.core.synth.distribution import Bins, probabilities, sample
from neurallabel.core.synth.optimise import OptimiseOptions, reinforce
from neurallabel.core.synth.poses import Range
from neurallabel.core.synth.tasks import TaskSet, miou, score

from test_synth import write_orbit_scene


def test_miou_counts_the_classes_present() -> None:
    truth = np.array([[0, 0, 1, 1]])
    assert miou(truth, truth, 2) == 1.0
    assert miou(np.array([[0, 1, 1, 1]]), truth, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert miou(np.zeros((1, 4), int), truth, 3) == pytest.approx((2 / 4 + 0) / 2)


def squares(n: int, side: int, rng: np.random.Generator) -> TaskSet:
    """Bright squares of ``side`` pixels (class 1) on a dark ground at random places, 24x16."""
    images = rng.uniform(0.0, 0.3, (n, 16, 24, 3)).astype(np.float32)
    classes = np.zeros((n, 16, 24), np.int64)
    for i in range(n):
        y, x = rng.integers(0, 16 - side + 1), rng.integers(0, 24 - side + 1)
        images[i, y:y + side, x:x + side] = rng.uniform(0.7, 1.0, 3)
        classes[i, y:y + side, x:x + side] = 1
    return TaskSet(images, classes, (1,))


def test_a_net_trained_on_the_target_look_scores_higher_than_one_trained_on_another() -> None:
    rng = np.random.default_rng(0)
    target = squares(8, 12, rng)
    assert score(squares(8, 12, rng), target, steps=60) > score(squares(8, 2, rng), target, steps=60) + 0.1


def zoom_gap():
    """A zoom gap by design: (target, bins, render) where bin 0 renders big squares like the target's, bin 1
    tiny ones."""
    rng = np.random.default_rng(1)
    target = squares(8, 12, rng)
    bins = Bins((Range(0, 360, 1), Range(20, 40, 1), Range(1.0, 2.0, 2)))

    def render(draws):
        parts = [squares(1, 12 if b == 0 else 2, rng) for b in draws.bins]
        return TaskSet(np.concatenate([p.images for p in parts]), np.concatenate([p.classes for p in parts]), (1,))

    return target, bins, render


def test_reinforce_moves_mass_to_the_bins_that_look_like_the_target() -> None:
    target, bins, render = zoom_gap()
    logits, history = reinforce(render, target, bins, np.zeros(2),
                                OptimiseOptions(iterations=6, views_per_iteration=8, credit="groups", groups=4, task_steps=40,
                                                lr=0.4, tau=0.1, seed=0))
    assert len(history) == 6 and all(len(h["rewards"]) == 4 for h in history)
    assert probabilities(logits)[0] > 0.75
    assert history[-1]["probabilities"] == pytest.approx(list(probabilities(logits)))


def test_cli_synth_fit_to_poses_optimise_and_bad_input(tmp_path: Path, capsys) -> None:
    from neurallabel.core.cli import main
    from neurallabel.core.synth.poses import orbit_pose

    spec = write_orbit_scene(tmp_path)
    # the target cameras: all near, at one azimuth quadrant
    target = tmp_path / "target"
    target.mkdir()
    write_orbit_scene(target, [(a, 30.0, 1.02) for a in (10.0, 20.0, 30.0, 40.0, 50.0)])
    code = main(["synth", str(spec), "--out", str(tmp_path / "fit"), "--views", "3", "--azimuth", "0:360:4",
                 "--distance", "1.0:1.3:2", "--fit-to-poses", str(target / "transforms.json"), "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    psi = json.loads((tmp_path / "fit" / "synth" / "psi.json").read_text())
    p = np.array(psi["probabilities"]).reshape(4, 2, 2)
    assert p[0, :, 0].sum() == pytest.approx(1.0, abs=1e-6)  # azimuth 0-90, near: every target camera
    out = capsys.readouterr().out
    assert "synth: baked 3 of 3 views" in out

    # optimise against a labelled target: a synth bake of near views (a field-rendered target)
    assert main(["synth", str(spec), "--out", str(tmp_path / "near"), "--views", "4", "--distance", "1.0:1.05:1",
                 "--device", "cpu"]) == 0
    code = main(["synth", str(spec), "--out", str(tmp_path / "opt"), "--views", "2", "--optimise", "--target",
                 str(tmp_path / "near"), "--iterations", "2", "--views-per-iteration", "2", "--distance",
                 "1.0:1.3:2", "--azimuth", "0:360:1", "--elevation", "20:40:1", "--device", "cpu"])
    assert code == 0, capsys.readouterr()
    psi = json.loads((tmp_path / "opt" / "synth" / "psi.json").read_text())
    assert [h["iteration"] for h in psi["history"]] == [1, 2] and psi["optimise"]["estimator"] == "reinforce"
    assert psi["optimise"]["credit"] == "groups" and all(len(h["rewards"]) == 2 for h in psi["history"])
    assert psi["probabilities"] == pytest.approx(psi["history"][-1]["probabilities"])
    capsys.readouterr()

    for argv, message in ((["--tau", "0"], "--tau"), (["--distance", "1:2:0"], "--distance"),
                          (["--optimise"], "--target"), (["--size", "40"], "--size")):
        assert main(["synth", str(spec), "--out", str(tmp_path / "bad"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"error: {message}" in err[0], err
    # a target with a category the spec does not have
    coco = json.loads((tmp_path / "near" / "coco" / "annotations.json").read_text())
    coco["categories"].append({"id": 9, "name": "cat", "supercategory": "cat"})
    (tmp_path / "other.json").write_text(json.dumps(coco))
    assert main(["synth", str(spec), "--out", str(tmp_path / "bad"), "--optimise", "--target",
                 str(tmp_path / "other.json"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "category 9 is not in the spec" in err[0]
    assert not (tmp_path / "bad").exists()


def test_a_generated_scene_is_a_target_with_its_truth_classes(small_scene: Path) -> None:
    from neurallabel.core.data.truth import load_scene_truth
    from neurallabel.core.spec import spec_from_scene
    from neurallabel.core.synth.tasks import SIZE, load_target

    category_ids = tuple(sorted(spec_from_scene(small_scene).categories()))
    target = load_target(small_scene, category_ids, limit=2)
    assert target.images.shape == (2, SIZE[1], SIZE[0], 3) and target.classes.shape == (2, SIZE[1], SIZE[0])
    assert 0 < np.count_nonzero(target.classes) < target.classes.size  # objects and background
    assert set(np.unique(target.classes)) <= set(range(len(category_ids) + 1))
    with pytest.raises(NeuralLabelError, match="is not in the spec") as info:
        load_target(small_scene, category_ids[1:])
    assert info.value.field == "target"
    assert load_scene_truth(small_scene).objects  # the scene has truth: the test is not vacuous
    # another split of the scene (the few-shot benchmark's real frames are train frames)
    from neurallabel.core.data.dataset import load_dataset

    split = load_dataset(small_scene / "transforms.json").split
    assert len(load_target(small_scene, category_ids)) == len(split("test"))
    train = load_target(small_scene, category_ids, split="train")
    assert len(train) == len(split("train")) > len(split("test"))
    assert not np.array_equal(train.images[0], target.images[0])  # frame 0 is a test frame


# --- gumbel: the relaxed, differentiable estimator ---------------------------------------------------------


def zoom_render(rng: np.random.Generator):
    """A render of draws for the toy zoom gap: bin 0 gives big squares (the target's look), bin 1 tiny ones."""

    def render(draws):
        parts = [squares(1, 12 if b == 0 else 2, rng) for b in draws.bins]
        return TaskSet(np.concatenate([p.images for p in parts]), np.concatenate([p.classes for p in parts]), (1,))

    return render


def test_relaxed_weights_are_one_forward_and_carry_the_gumbel_softmax_gradient() -> None:
    import torch

    from neurallabel.core.synth.distribution import gumbel_softmax
    from neurallabel.core.synth.optimise import relaxed_weights

    bins = Bins((Range(0, 360, 3), Range(20, 40, 1), Range(1.0, 2.0, 1)))
    draws = sample(np.array([0.5, 0.0, -0.5]), bins, 5, np.random.default_rng(3), tau=0.1)
    logits = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64, requires_grad=True)
    w = relaxed_weights(logits, draws, 1.0)
    assert torch.equal(w.detach(), torch.ones(5, dtype=torch.float64))
    w.sum().backward()
    ref = torch.tensor([0.5, 0.0, -0.5], dtype=torch.float64, requires_grad=True)
    soft = gumbel_softmax(ref, torch.as_tensor(draws.gumbel_uniform), 1.0)
    soft[torch.arange(5), torch.as_tensor(draws.bins)].sum().backward()
    assert torch.allclose(logits.grad, ref.grad) and logits.grad.abs().sum() > 1e-3


def test_view_values_rank_target_like_views_above_others() -> None:
    from neurallabel.core.synth.tasks import view_values

    rng = np.random.default_rng(4)
    target = squares(8, 12, rng)
    big, tiny = squares(4, 12, rng), squares(4, 2, rng)
    train = TaskSet(np.concatenate([big.images, tiny.images]), np.concatenate([big.classes, tiny.classes]), (1,))
    values, reward = view_values(train, target, steps=40)
    assert values[:4].mean() > values[4:].mean() and 0.0 <= reward <= 1.0


def test_gumbel_gradient_raises_the_better_bin() -> None:
    """One step from uniform logits: the bin whose views look like the target gains (gradient sign)."""
    from neurallabel.core.synth.optimise import gumbel

    rng = np.random.default_rng(5)
    target = squares(8, 12, rng)
    bins = Bins((Range(0, 360, 1), Range(20, 40, 1), Range(1.0, 2.0, 2)))
    options = OptimiseOptions(iterations=1, views_per_iteration=8, task_steps=40, lr=0.1, seed=0)
    logits, history = gumbel(zoom_render(rng), target, bins, np.zeros(2), options)
    assert logits[0] > logits[1] and set(history[0]["bins_drawn"]) == {0, 1}
    logits, history = gumbel(zoom_render(rng), target, bins, np.zeros(2),
                             OptimiseOptions(iterations=5, views_per_iteration=8, task_steps=40, lr=0.4, seed=0))
    assert probabilities(logits)[0] > 0.75 and len(history) == 5
    assert history[-1]["probabilities"] == pytest.approx(list(probabilities(logits)))


def test_view_advantages_from_groups_and_from_half_subsets() -> None:
    """Disjoint groups give the leave-one-out baseline; complementary halves give each view the mean reward
    with it minus the mean without it, which finds the one view that matters."""
    from neurallabel.core.synth.optimise import half_subsets, view_advantages

    groups = np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]], dtype=bool)
    rewards = np.array([0.5, 0.2, 0.2])
    np.testing.assert_allclose(view_advantages(groups, rewards), [0.3, 0.3, -0.15, -0.15, -0.15, -0.15])
    masks = half_subsets(10, 12, np.random.default_rng(0))
    assert masks.shape == (12, 10) and np.all(masks.sum(0) == 6) and np.all(masks.sum(1) == 5)
    rewards = 0.1 + 0.4 * masks[:, 3] + 0.01 * masks[:, 7]  # view 3 is what the task needs
    advantage = view_advantages(masks, rewards)
    assert advantage[3] == pytest.approx(0.4 + 0.01 * (np.mean(masks[masks[:, 3], 7]) - np.mean(masks[~masks[:, 3], 7])))
    assert int(np.argmax(advantage)) == 3 and abs(np.mean(np.delete(advantage, 3))) < 0.1


def test_reinforce_with_subset_credit_moves_mass_to_the_target_like_bin() -> None:
    target, bins, render = zoom_gap()
    logits, history = reinforce(render, target, bins, np.zeros(2),
                                OptimiseOptions(iterations=6, views_per_iteration=8, credit="subsets", subsets=6,
                                                task_steps=40, lr=0.4, tau=0.1, seed=0))
    assert len(history) == 6 and all(len(h["rewards"]) == 6 for h in history)
    assert probabilities(logits)[0] > 0.75
    with pytest.raises(NeuralLabelError, match="credit 'votes'") as info:
        reinforce(render, target, bins, np.zeros(2), OptimiseOptions(iterations=1, credit="votes"))
    assert info.value.field == "credit"


def test_the_requests_choices_are_the_optimisers() -> None:
    """The request layer keeps its own tuples (the CLI's start-up imports no torch); they must name exactly what
    the optimiser runs."""
    from neurallabel.core.app.jobs import SYNTH_CREDITS, SYNTH_ESTIMATORS
    from neurallabel.core.synth.optimise import CREDITS, ESTIMATORS

    assert SYNTH_CREDITS == CREDITS
    assert SYNTH_ESTIMATORS == tuple(ESTIMATORS)
