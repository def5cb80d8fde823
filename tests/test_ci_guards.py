"""The suite's own guards: in CI a missing input fails instead of skipping, and a hung test times out."""
import os
import subprocess
import sys
import textwrap

import tomllib

from tests.conftest import REPO_ROOT


def _pytest(tmp_path, body: str, ci: bool, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(body))
    env = {**os.environ, "CI": "true" if ci else ""}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                           str(tmp_path / "test_probe.py")],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_a_missing_shared_file_skips_locally_and_fails_in_ci(tmp_path):
    body = """
        from tests.conftest import shared_file

        def test_needs_data():
            shared_file("no-such-file.json")
    """
    local = _pytest(tmp_path, body, ci=False)
    assert local.returncode == 0 and "1 skipped" in local.stdout, local.stdout
    ci = _pytest(tmp_path, body, ci=True)
    assert ci.returncode == 1 and "1 failed" in ci.stdout and "CI=true" in ci.stdout, ci.stdout


def test_a_hung_test_times_out(tmp_path):
    body = """
        import time

        def test_hangs():
            time.sleep(60)
    """
    out = _pytest(tmp_path, body, False, "--timeout=2")
    assert out.returncode == 1 and "Timeout" in out.stdout, out.stdout
    with open(f"{REPO_ROOT}/pyproject.toml", "rb") as fh:  # and the suite runs with a limit of its own
        assert tomllib.load(fh)["tool"]["pytest"]["ini_options"]["timeout"] > 0


def test_installed_packages_have_bytecode():
    """`make install` compiles site-packages: with PYTHONDONTWRITEBYTECODE=1 (these machines) nothing else ever
    does, and every Ray actor and subprocess would compile torch/transformers/vLLM from source again."""
    import importlib.util
    from pathlib import Path

    import transformers

    source = str(Path(transformers.__file__).parent / "modeling_utils.py")
    if not Path(importlib.util.cache_from_source(source)).is_file():
        from tests.conftest import missing

        missing("site-packages has no bytecode: install with `make install`, which compiles it")


def test_the_longest_files_go_first_and_each_file_keeps_its_order():
    """`make test`'s xdist workers take files in collection order; the hook puts the multi-minute ones first."""
    from pathlib import Path
    from types import SimpleNamespace

    from tests.conftest import LONGEST_FILES, pytest_collection_modifyitems

    tests = Path(REPO_ROOT) / "tests"
    assert [n for n in LONGEST_FILES if not (tests / n).is_file()] == []  # a renamed file would silently go last

    def item(name, test, slow=False):
        return SimpleNamespace(path=tests / name, test=test, get_closest_marker=lambda m: slow and m == "slow")

    items = [item("test_a.py", 1), item("test_a.py", 2), item("test_b.py", 1), item("test_b.py", 2, slow=True),
             item(LONGEST_FILES[1], 1), item(LONGEST_FILES[0], 1), item(LONGEST_FILES[0], 2)]
    pytest_collection_modifyitems(items)
    assert [(i.path.name, i.test) for i in items] == [
        (LONGEST_FILES[0], 1), (LONGEST_FILES[0], 2), (LONGEST_FILES[1], 1), ("test_b.py", 1), ("test_b.py", 2),
        ("test_a.py", 1), ("test_a.py", 2)]
