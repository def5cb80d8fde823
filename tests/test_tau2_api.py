"""tau2_api defers tau2.utils.llm_utils (and litellm with it) until tau2 calls into it: the stand-in must cover every
name tau2 imports from that module, and the first call must run tau2's real function."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import envs.tau2_telecom.tau2_api as t2

REPO = Path(__file__).resolve().parents[1]


def _names_tau2_imports_from_llm_utils() -> set[str]:
    import tau2

    names = set()
    for path in Path(tau2.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == t2._LLM_UTILS:
                names |= {alias.name for alias in node.names}
    return names


def test_stand_in_covers_every_name_tau2_imports_from_llm_utils():
    assert _names_tau2_imports_from_llm_utils() == set(t2._LLM_UTILS_NAMES)


def test_litellm_loads_only_when_tau2_first_calls_into_llm_utils_from_any_thread():
    probe = """
import json, sys
import envs.tau2_telecom.tau2_api as t2
from tau2.orchestrator import orchestrator
before = "litellm" in sys.modules
msgs = [t2.AssistantMessage(role="assistant", content="hi", cost=0.25),
        t2.UserMessage(role="user", content="ok", cost=0.5)]
from concurrent.futures import ThreadPoolExecutor
with ThreadPoolExecutor(8) as pool:  # first calls from several threads at once (an env worker's sessions)
    costs = list(pool.map(lambda _: orchestrator.get_cost(msgs), range(8)))  # tau2 took this name from the stand-in
cost = costs[0] if all(c == costs[0] for c in costs) else costs
real = sys.modules[t2._LLM_UTILS]
print(json.dumps({"before": before, "after": "litellm" in sys.modules, "cost": cost,
                  "real": not getattr(real, "_telerl_deferred", False), "same": real.get_cost(msgs) == cost}))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"before": False, "after": True, "cost": [0.25, 0.5], "real": True, "same": True}
