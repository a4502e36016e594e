"""``python -m relay``: the ``relay`` command, for when only the interpreter is on the path.

``python -m relay.cli.main`` works too, but Python warns about it (``relay.cli`` imports
``relay.cli.main`` before runpy executes it), which lands in every child process's log.
"""

from relay.cli import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
