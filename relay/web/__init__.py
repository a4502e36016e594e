"""The Starlette app: lifespan state, Twilio webhooks, the WebSocket, admin API, feeds, health."""
