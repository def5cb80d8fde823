"""rl/fast_start.py: transformers imported by a telerl process leaves scikit-learn out (and still works); an actor
loads its libraries with the cyclic GC paused, then frozen."""
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

MODEL = ("from transformers import AutoModelForCausalLM, Qwen2Config\n"
         "AutoModelForCausalLM.from_config(Qwen2Config(vocab_size=64, hidden_size=32, num_attention_heads=2, "
         "num_key_value_heads=1, intermediate_size=64, num_hidden_layers=1))")


def test_the_premise_transformers_would_load_sklearn():
    """If transformers stops importing scikit-learn for its model classes, rl/fast_start.py can go."""
    import importlib.util

    from transformers.utils import import_utils

    assert import_utils.is_sklearn_available()  # installed (tau2 needs it), so transformers would import it
    source = open(importlib.util.find_spec("transformers.generation.candidate_generator").origin).read()
    assert "if is_sklearn_available():" in source.split("class ")[0]  # at module import


def test_a_telerl_process_builds_a_model_without_sklearn():
    code = f"import rl\n{MODEL}\nimport sys; print('sklearn' in sys.modules, sys.modules['transformers.utils']" \
           ".is_sklearn_available())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


def test_transformers_imported_before_telerl_is_patched_in_place():
    import transformers.utils

    from rl.fast_start import install

    transformers.utils.is_sklearn_available = transformers.utils.import_utils.is_sklearn_available
    install()
    assert transformers.utils.is_sklearn_available() is False


def test_the_hook_is_installed_once_patches_the_module_after_it_runs_and_leaves(tmp_path, monkeypatch):
    from rl import fast_start

    (tmp_path / "stand_in_utils.py").write_text("def is_sklearn_available():\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(fast_start, "PATCHED_MODULE", "stand_in_utils")
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, fast_start._PatchAfterImport)])
    monkeypatch.delitem(sys.modules, "stand_in_utils", raising=False)
    fast_start.install()
    fast_start.install()
    assert sum(isinstance(f, fast_start._PatchAfterImport) for f in sys.meta_path) == 1
    import stand_in_utils

    assert stand_in_utils.is_sklearn_available() is False
    assert not any(isinstance(f, fast_start._PatchAfterImport) for f in sys.meta_path)  # its one job is done
    del sys.modules["stand_in_utils"]


def test_loading_without_gc_pauses_the_collector_then_freezes_what_was_loaded():
    import gc

    from rl.fast_start import loading_without_gc

    gc.unfreeze()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            with loading_without_gc():
                assert not gc.isenabled()
                loaded = [[i] for i in range(1000)]  # tracked containers, as imports allocate
            assert gc.isenabled() is enabled and gc.get_freeze_count() >= len(loaded)
            gc.unfreeze()
        with pytest.raises(ValueError), loading_without_gc():
            raise ValueError("a failed import")
        assert gc.isenabled() is False  # restored to what it was (disabled above), even on an error
    finally:
        gc.unfreeze()
        gc.enable()
