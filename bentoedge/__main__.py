"""``python -m bentoedge``: the same as the ``bentoedge`` command."""

from bentoedge.cli import main

main()
