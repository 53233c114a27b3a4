"""Dataset writers: BOP (scenewise), COCO (instances, compressed RLE) and raw maps.

Every writer works per frame -- ``frame_files`` (the frame's image files, written at once) and ``fragment``
(the frame's entries of the aggregate JSON files, kept as a per-frame fragment) -- and assembles the
aggregate files from all finished frames' fragments (``assemble``), sorted by frame. So a re-run skips
finished frames, and pieces baked with ``--frames`` / ``--shard`` into one folder give the same bytes as one
run. All writes are atomic (:mod:`.atomic`).
"""

from __future__ import annotations

from .context import ExportContext

FORMATS = ("bop", "coco", "raw")


def get_writer(name: str):
    if name == "bop":
        from . import bop
        return bop
    if name == "coco":
        from . import coco
        return coco
    if name == "raw":
        from . import raw
        return raw
    raise KeyError(name)


__all__ = ["FORMATS", "ExportContext", "get_writer"]
