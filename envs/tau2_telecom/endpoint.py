"""LLMEndpoint: an OpenAI-compatible chat endpoint reached through litellm - one dataclass for the simulated
customer (users.LLMUser), the session's NL-assertion judge and the reward actor's judge (rl/rm/judges.py), and the
config sections `user_llm` and `judge` (rl/config.py). Plain fields only, so OmegaConf can type-check it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LLMEndpoint:
    """An OpenAI-compatible chat endpoint reached through litellm."""

    model: str = ""  # litellm model name, e.g. "openai/Qwen3-4B"; "" = not configured
    base_url: str = ""  # OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1; "" = litellm's default
    api_key: str = "EMPTY"  # local servers accept any key
    temperature: float = 0.0  # sampling temperature
    max_tokens: int = 512  # completion length cap per call

    @property
    def configured(self) -> bool:
        return bool(self.model)

    def litellm_args(self, **extra) -> dict:
        """Keyword arguments for litellm.completion (besides model and messages)."""
        args = {"temperature": self.temperature, "max_tokens": self.max_tokens, **extra}
        if self.base_url:
            args.update(api_base=self.base_url, api_key=self.api_key)
        return args
