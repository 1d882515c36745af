"""Old module paths that keep working: each name below is an alias of the module at its new place.

``import drsformer_fast.static_report`` (or ``python -m drsformer_fast.static_report``) gives the very
module object of ``drsformer_fast.perf.static_report``: one module, so its globals, caches and
monkeypatches are shared whichever name imported it. The finder answers only for these names and is
installed by ``drsformer_fast/__init__.py``; it imports nothing until an old name is asked for.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_PERF = ("accounting", "bench", "benchmarking", "hostcost", "launches", "memory", "plots", "selfcheck",
         "static_report", "tolerance")
_IMAGES = ("imageio", "inference", "evaluation", "metrics", "scoring")

MOVED: dict[str, str] = {
    **{f"drsformer_fast.{name}": f"drsformer_fast.perf.{name}" for name in _PERF},
    **{f"drsformer_fast.{name}": f"drsformer_fast.images.{name}" for name in _IMAGES},
    "drsformer_fast.kernels.compile_check": "drsformer_fast.perf.compile_check",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        # the module itself, already executed: the import system then only files it under the old name
        module = importlib.import_module(self.new_name)
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system stamped the alias's spec on the module: give it back its own
        module.__spec__ = self._own_spec

    def get_code(self, fullname):
        # `python -m <old name>`: run the new module as __main__ under its own name, so that its
        # relative imports resolve inside its new package
        source = f"import runpy\nrunpy.run_module({self.new_name!r}, run_name='__main__', alter_sys=True)\n"
        return compile(source, f"<{fullname} moved to {self.new_name}>", "exec")

    def is_package(self, fullname):
        return False


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED.get(fullname)
        if new_name is None:
            return None
        spec = importlib.util.spec_from_loader(fullname, _AliasLoader(new_name))
        new_spec = importlib.util.find_spec(new_name)
        spec.origin = new_spec.origin  # what runpy and tracebacks show
        return spec


def install() -> None:
    if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
        sys.meta_path.append(_AliasFinder())
