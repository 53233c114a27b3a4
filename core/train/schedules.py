"""What changes over a training run, as functions of the step or of the done fraction (0 at the start,
1 at the end of the budget): the density grid's size, the learning rates, the occupancy refreshes and the
weights of decaying loss terms."""

from __future__ import annotations

from typing import Callable, Optional

#: density grid sizes and the share of the run after which each takes over (coarse to fine)
DENSITY_SCHEDULE = ((64, 0.0), (96, 0.12), (128, 0.25), (160, 0.4))

#: Adam learning rates at the start (decayed to 1/10 by the end). The density grid's: at 0.2 surfaces sink
#: behind their true place as training goes on (more steps, worse depth in scripts/bench_field.py); at 0.02
#: the field stays foggy (more samples per ray, lower PSNR)
LEARNING_RATES = {"density": 0.1, "planes": 0.05, "mlp": 0.005}

#: nerfacc's occupancy schedule: refresh every this many steps; all cells while warming up, then a share.
#: The threshold follows nerfacc's rule all through training (the lower of 0.01 and the mean): a faint haze
#: stays occupied, so its samples get the gradients that clear it. Only the finished field takes the
#: absolute threshold, for speed (with it during training, haze below it was never sampled, so never
#: cleared: held-out views saw it as fog in front of the surfaces, the tail of bench_field's depth error)
OCCUPANCY_EVERY = 16
OCCUPANCY_WARMUP = 256
OCCUPANCY_SHARE = 0.25

WeightSchedule = Callable[[float], float]


def density_resolution_at(fraction: float) -> int:
    """Density grid size for this share of the run (coarse to fine)."""
    resolution = DENSITY_SCHEDULE[0][0]
    for r, start in DENSITY_SCHEDULE:
        if fraction >= start:
            resolution = r
    return resolution


def finest_density_resolution() -> int:
    return max(r for r, _ in DENSITY_SCHEDULE)


def learning_rate_factor(fraction: float) -> float:
    """Exponential decay to 1/10 over the run."""
    return 0.1 ** fraction


def occupancy_share_at(step: int) -> Optional[float]:
    """Share of cells to refresh before ``step``, or None for no refresh. Before the first refresh every
    cell stays occupied: all of space is seen once."""
    if step % OCCUPANCY_EVERY != 0 or step < OCCUPANCY_EVERY:
        return None
    return 1.0 if step < OCCUPANCY_WARMUP else OCCUPANCY_SHARE


def constant(weight: float) -> WeightSchedule:
    return lambda fraction: weight


def exponential(start: float, final_share: float, scale: float = 1.0) -> WeightSchedule:
    """``start`` decayed exponentially to ``final_share`` of it by the end, times ``scale``."""
    return lambda fraction: start * final_share ** fraction * scale
