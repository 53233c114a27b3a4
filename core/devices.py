"""Which torch device a job runs on: the one resolver the CLI, the worker and the library share."""

from __future__ import annotations

from .errors import NeuralLabelError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")


def resolve_device(name: str | None, what: str = "device"):
    """``auto`` (or None) -> CUDA when torch has it, else the CPU; ``cpu``, ``cuda`` and ``cuda:N`` are checked.

    NeuralLabelError naming ``what`` (the request's field) when the device does not exist on this machine.
    """
    import torch

    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index_text = name.partition(":")[2]
        if index_text and not index_text.isdigit():
            raise NeuralLabelError(f"{what} {name!r}: use auto, cpu, cuda or cuda:N", field=what)
        if not torch.cuda.is_available():
            raise NeuralLabelError(f"{what} {name!r}: no CUDA device is available to torch on this machine "
                                   "(use cpu or auto)", field=what)
        if index_text and int(index_text) >= torch.cuda.device_count():
            raise NeuralLabelError(f"{what} {name!r}: this machine has {torch.cuda.device_count()} CUDA "
                                   f"device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}", field=what)
        return torch.device(name)
    raise NeuralLabelError(f"{what} {name!r}: use auto, cpu, cuda or cuda:N", field=what)
