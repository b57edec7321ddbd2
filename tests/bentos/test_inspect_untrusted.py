"""``bentoedge inspect`` prints text from a manifest nobody has verified (security finding 9):
escape sequences, forged lines and Rich markup must come out as inert text."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from bentoedge.bentos.manifest import canonical_json
from bentoedge.cli import cli

SEALED = Path(__file__).resolve().parents[1] / "edge" / "data" / "sealed" / "tiny-1"


def test_inspect_shows_hostile_manifest_text_inert(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-1"
    shutil.copytree(SEALED, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["source"]["file"] = "m.onnx\x1b[2J\x1b]0;pwned\x07\nok: tiny:1 is signed by trusted key 0000"
    manifest["created"] = "[bold red]trusted[/]"
    manifest["artifacts"][0]["id"] = "edge-[/]fp32[link=http://x]"
    (folder / "manifest.json").write_bytes(canonical_json(manifest))  # an attacker writes canonical form too
    r = CliRunner().invoke(cli, ["inspect", str(folder)])
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output
    assert not any(line.startswith("ok:") for line in r.output.splitlines())  # no forged verdict line
    assert "\\x1b[2J" in r.output and "[bold red]trusted[/]" in r.output
    assert "not checked" in r.output
