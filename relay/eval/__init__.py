"""``relay eval``: agent scenarios played by a model caller over the real WebSocket path."""
