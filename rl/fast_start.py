"""Cheaper start-ups for telerl's processes: scikit-learn kept out of transformers (`install`), and no cyclic GC
while an actor loads its libraries (`loading_without_gc`).

transformers imports scikit-learn whenever it is installed (tau2 needs it, so it is): its assisted-generation helper
does `if is_sklearn_available(): from sklearn.metrics import roc_curve` as soon as any model class is imported, and
that pulls in sklearn and scipy.stats, ~2 s of every learner rank's, engine's and driver's start-up on the 2-core
machine (9.1 -> 7.1 s for a learner rank's imports). Only assisted generation with a confidence threshold uses it;
telerl never does. So right after `transformers.utils` is imported, its `is_sklearn_available` answers False.
Installed by `rl/__init__.py`, so every telerl process (drivers, Ray actors, tests) has it before it can import
transformers; it costs nothing until transformers is imported and changes nothing else.
"""
from __future__ import annotations

import gc
import importlib.abc
import importlib.util
import sys
from contextlib import contextmanager

PATCHED_MODULE = "transformers.utils"


def _patch(module) -> None:
    module.is_sklearn_available = lambda: False


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for PATCHED_MODULE it asks the other finders and wraps the loader they return."""

    def find_spec(self, name, path, target=None):
        if name != PATCHED_MODULE:
            return None
        sys.meta_path.remove(self)  # once; and the real finders answer the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_then_patch
        return spec


def install() -> None:
    if PATCHED_MODULE in sys.modules:  # imported before telerl: patch it now (modules that copied the name keep it)
        _patch(sys.modules[PATCHED_MODULE])
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())


@contextmanager
def loading_without_gc():
    """Around the imports (and anything else that only allocates what lives for the process) of an actor's start:
    Python's cyclic GC would scan the growing heap again and again while torch, transformers, DeepSpeed or vLLM are
    imported, for nothing (modules are not garbage). At the end what was loaded is frozen (`gc.freeze`), so later
    collections skip it too - vLLM's engine build calls gc.collect five times. On the 2-core machine an engine's
    start (imports, tokenizer, engine build) took 14.4-16.0 CPU-s with the GC on throughout and 12.2 with this."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
