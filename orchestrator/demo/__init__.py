"""``orchestrator demo``: the bots of a bots.yaml answering on the loopback Discord and OpenAI
sandbox servers, with no accounts."""

from .runner import run_demo

__all__ = ["run_demo"]
