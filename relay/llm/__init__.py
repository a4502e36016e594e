"""Streaming chat completions from any OpenAI-compatible server.

``types`` (requests, events, the :class:`ChatModel` seam), ``sse`` (the event stream),
``client`` (:class:`OpenAIChat`: time limits, retries, usage) and its two transports:
``transport`` (aiohttp, the default) and ``http1`` (relay's own HTTP/1.1 client, ``lean``).
"""
