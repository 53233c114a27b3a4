"""Entry point of the worker process: ``python <extension>/core/worker.py job.json`` (see :mod:`.app.worker`; the jobs are in :mod:`.app.jobs`).

The add-on launches this file by path, so it stays here; the process lives in :mod:`.app.worker`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:
    # Run as a script: load the extension folder as a package so relative imports in core work, without
    # putting core/ itself first on sys.path (its module names could shadow others).
    import importlib
    import importlib.util

    _core_dir = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _core_dir:
        sys.path.pop(0)
    _ext_dir = _core_dir.parent
    # Always the installed package's name, whatever the folder is called: numba caches compiled kernels next to
    # their source and pickles the module name with them, so a worker that named the package after a clone's
    # folder ("main") left caches that every `neurallabel` command on the same files then failed to load.
    _name = "neurallabel" if "neurallabel" not in sys.modules else "neurallabel_ext"
    _spec = importlib.util.spec_from_file_location(_name, _ext_dir / "__init__.py",
                                                   submodule_search_locations=[str(_ext_dir)])
    _package = importlib.util.module_from_spec(_spec)
    sys.modules[_name] = _package
    _spec.loader.exec_module(_package)
    sys.exit(importlib.import_module(f"{_name}.core.app.worker").main(sys.argv[1:]))

from .app.worker import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
