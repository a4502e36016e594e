"""Streaming chat completions from any OpenAI-compatible server, over one transport seam."""
