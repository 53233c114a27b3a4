"""Dataset writers: BOP (scenewise), COCO (instances, compressed RLE) and raw maps -- and their registry.

A writer (:class:`Writer`) turns each view's labels into files, and all finished views into the aggregate
files. ``WRITERS`` maps a format name to its writer; it is the one list of formats (``FORMATS``): the command
line, the worker and the add-on take the names from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from ..errors import NeuralLabelError
from .bop import BOP
from .coco import COCO
from .context import ExportContext
from .raw import RAW

if TYPE_CHECKING:
    from ..geometry.view import View
    from ..labels.frame import FrameLabels


class Writer(Protocol):
    """One output format. Every method returns what to write; the bake writes it (atomically, per file).

    - ``static_files(ctx)``: files that depend on the spec alone (e.g. BOP's models), written before any view.
    - ``frame_files(ctx, view, labels)``: the view's own files (images, masks, depth), ``{relative path: bytes}``.
    - ``fragment(ctx, view, labels)``: the view's entries of the aggregate files, as JSON-able data; the bake
      keeps it per view (a finished view is skipped by a re-run).
    - ``assemble(ctx, fragments)``: the aggregate files from *all* finished views' fragments, ``[(view.index,
      fragment)]`` sorted by index -- so pieces of a bake (``frames`` / ``shard``) merge into the bytes of one run.

    Paths are relative to the bake's output folder and start with the writer's ``name``. Views are numbered by
    ``view.index``; poses come from ``view.cam_to_world``; a synthetic view (``view.image_path`` None) has no
    photo, and each writer says what it writes instead. ``needs_depth``: the writer stores full depth maps
    (the labeler evaluates the depth source at every pixel); ``needs_confidence``: it stores the confidence map.
    """

    name: str
    title: str  # a short display name
    description: str  # one line for a user interface
    needs_depth: bool
    needs_confidence: bool

    def static_files(self, ctx: ExportContext) -> dict[str, bytes]: ...

    def frame_files(self, ctx: ExportContext, view: "View", labels: "FrameLabels") -> dict[str, bytes]: ...

    def fragment(self, ctx: ExportContext, view: "View", labels: "FrameLabels") -> dict: ...

    def assemble(self, ctx: ExportContext, fragments: list[tuple[int, dict]]) -> dict[str, bytes]: ...


#: format name -> its writer, in the canonical order of a bake's formats.
WRITERS: dict[str, Writer] = {writer.name: writer for writer in (BOP, COCO, RAW)}
FORMATS: tuple[str, ...] = tuple(WRITERS)


def get_writer(name: str) -> Writer:
    """The writer of format ``name``; NeuralLabelError (field ``formats``) for an unknown name."""
    try:
        return WRITERS[name]
    except KeyError:
        raise NeuralLabelError(f"unknown format {name!r}: choose from {', '.join(FORMATS)}", field="formats") from None


__all__ = ["FORMATS", "WRITERS", "ExportContext", "Writer", "get_writer"]
