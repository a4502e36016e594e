"""Replaying recorded calls against the current agent: cassette and live modes."""
