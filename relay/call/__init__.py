"""One phone call: the receive loop, turns, the transcript, the keypad and the ending.

Read in this order: ``session`` (CallSession: one per ConversationRelay socket; frames in, frames
out, setup, ending, close), ``turn`` (one turn task: model rounds, tools, fillers, the apology),
``transcript`` (the history as typed messages, tool answers right after their calls by
construction), ``escalation`` and ``trouble`` (what happens when the model keeps failing),
``ending`` (a caller who goes quiet, backchannel counts), ``keypad``, ``ports`` (what the app
hands a call).

No Starlette and no SQLAlchemy here: a call talks to small ports (the model, the recorder, the
retriever, the caller directory) that the web layer wires in.
"""
