"""Everyday mistakes with the cloud verbs get one line with the cause and the next step."""

from __future__ import annotations

import socket

from click.testing import CliRunner
from service_support import TinySealed

from bentoedge.cli import cli


def test_serve_on_a_busy_port_says_so_in_one_line(tiny_sealed: TinySealed) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        r = CliRunner().invoke(cli, ["serve", tiny_sealed.tag, "--port", str(port)])
    assert r.exit_code == 2, r.output
    assert f"port {port} on 127.0.0.1 is already in use" in r.output and "--port" in r.output
    assert "Traceback" not in r.output
