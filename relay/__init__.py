"""relay: a Twilio ConversationRelay service that answers phone calls with a streaming LLM agent."""

from __future__ import annotations

__version__ = "0.1.0"
