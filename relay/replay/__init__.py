"""Replaying recorded calls against the current agent: cassette and live modes.

``runner`` drives each recorded call again (``replay``, ``run_replays``); ``script`` is the
caller's side of a recording; ``cassette`` serves the recorded model answers; ``compare`` decides
what counts as a change; ``expectations`` checks a recording's ``expect``; ``report`` renders the
outcome as text and JUnit. The command line is :mod:`relay.cli.replay`.
"""
