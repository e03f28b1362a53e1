"""``orchestrator demo``: the bots of a bots.yaml answering on the loopback Discord and OpenAI
sandbox servers, with no accounts."""

from .runner import ANSWER_TIMEOUT, run_demo, run_until_interrupted

__all__ = ["ANSWER_TIMEOUT", "run_demo", "run_until_interrupted"]
