"""Twilio's contract: ConversationRelay frames, TwiML and request signatures.

Nothing here imports the rest of relay except :mod:`relay.errors`.
"""
