"""Reading JSON files users hand us (datasets, label specs, scene truth) with errors that name the file.

User JSON is read strictly: a key given twice in one object is refused (``json`` would keep the last one
silently), and so is nesting too deep for the parser.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import NeuralLabelError
from .files import file_problem


class DuplicateKeyError(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_object(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(key)
        out[key] = value
    return out


def loads_strict(text: str, source: str) -> Any:
    """Parse JSON text; malformed JSON, a duplicate key or too deep nesting -> NeuralLabelError naming
    ``source``."""
    try:
        return json.loads(text, object_pairs_hook=_unique_object)
    except DuplicateKeyError as exc:
        raise NeuralLabelError(f"{source}: the key {exc.key!r} appears twice in one object") from None
    except json.JSONDecodeError as exc:
        raise NeuralLabelError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except RecursionError:
        raise NeuralLabelError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:  # an integer literal longer than Python converts (sys.get_int_max_str_digits)
        raise NeuralLabelError(f"{source}: not valid JSON ({exc})") from None


def read_json(path: Path) -> Any:
    """Parse ``path``; malformed JSON, a binary file or a path that is not a regular file (a directory, a
    FIFO, ``/dev/zero``) -> NeuralLabelError naming the file.

    Callers check that the file exists first, with a message that says what the file should have been.
    """
    problem = file_problem(path)
    if problem is not None:
        raise NeuralLabelError(f"{path}: {problem}")
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise NeuralLabelError(f"{path}: not a text file") from None
    except OSError as exc:
        raise NeuralLabelError(f"{path}: cannot be read ({exc.__class__.__name__})") from None
    return loads_strict(text, str(path))
