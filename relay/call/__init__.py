"""One phone call: the receive loop, turns, the transcript, the keypad and the ending.

No Starlette and no SQLAlchemy here: a call talks to small ports (the model, the recorder, the
retriever, the caller directory) that the web layer wires in.
"""
