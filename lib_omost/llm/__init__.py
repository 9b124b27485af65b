"""Omost LLM chat: system prompts, the conversation, and two streaming backends.

- local transformers models (`LocalBackend`, `load_model` / `unload_model` / `offload_model`),
- OpenAI-compatible servers (`OpenAIBackend` with an `EndpointConfig`),
both driven by `ask` / `retry`, which yield events (`TextDelta`, `CanvasUpdate`, `Progress`, `BudgetWarning`,
`Finished`, `Failed`). transformers, bitsandbytes and httpx are imported only where they are used, and the
local backend (it imports torch) only when one of its names is first used: `omost chat --endpoint` runs
without torch.
"""

from lib_omost.llm.chat import ask, budget_warning, retry
from lib_omost.llm.conversation import Budget, Conversation, Turn, canvas_answer, estimate_tokens
from lib_omost.llm.events import (Backend, BudgetWarning, CanvasUpdate, Event, Failed, Finished,
                                  GenerationSettings, LLMError, Progress, TextDelta)
from lib_omost.llm.openai_compat import EndpointConfig, OpenAIBackend, Secret, api_key_from_env
from lib_omost.llm.prompts import generic_system_prompt, omost_system_prompt, system_prompt

__all__ = [
    "ask", "retry", "budget_warning",
    "Budget", "Conversation", "Turn", "canvas_answer", "estimate_tokens",
    "Backend", "BudgetWarning", "CanvasUpdate", "Event", "Failed", "Finished", "GenerationSettings", "LLMError",
    "Progress", "TextDelta",
    "DEFAULT_MODEL", "OMOST_MODELS", "LocalBackend", "LocalModelSpec", "load_model", "offload_model",
    "quantization_problem", "unload_model",
    "EndpointConfig", "OpenAIBackend", "Secret", "api_key_from_env",
    "generic_system_prompt", "omost_system_prompt", "system_prompt",
]

_LOCAL_NAMES = ("DEFAULT_MODEL", "OMOST_MODELS", "LocalBackend", "LocalModelSpec", "load_model", "offload_model",
                "quantization_problem", "unload_model")


def __getattr__(name: str):
    if name in _LOCAL_NAMES:
        from lib_omost.llm import local
        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
