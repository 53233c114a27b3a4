"""User-facing errors. The command line turns them into one line on stderr and exit code 2;
the add-on shows them in Blender's report area."""

from __future__ import annotations

from typing import Optional


class NeuralLabelError(Exception):
    """Bad input the user can fix: the message names the file or value and the problem.

    ``field`` names the request field at fault (``"device"``, ``"frames"``, ``"out"``...), when one is: the
    command line prefixes the message with its flag, the add-on with its button or property.
    """

    def __init__(self, message: str, *, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.field = field
