"""edge: the on-device agent: runtime, signed-update sync, local API and cloud fallback.

Imports nothing heavier than numpy, cryptography and tuf at module import time, so a
device installs ``bentoedge[edge]`` only.
"""
