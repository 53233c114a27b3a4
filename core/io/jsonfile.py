"""Reading JSON files users hand us (datasets, label specs, scene truth) with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import NeuralLabelError


def read_json(path: Path) -> Any:
    """Parse ``path``; malformed JSON or a binary file -> NeuralLabelError naming the file and line.

    Callers check that the file exists first, with a message that says what the file should have been.
    """
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise NeuralLabelError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise NeuralLabelError(f"{path}: not a text file") from None
