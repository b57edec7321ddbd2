"""bentoedge: the command line that ties ``bentos`` (build), ``cloud`` and ``edge`` together."""
