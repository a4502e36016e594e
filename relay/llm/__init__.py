"""Streaming chat completions from any OpenAI-compatible server.

``types`` (requests, events, the :class:`ChatModel` seam), ``sse`` (the event stream),
``transport`` (HTTP on aiohttp) and ``client`` (:class:`OpenAIChat`: time limits, retries,
usage).
"""
