"""The agent config: TOML round trip, environment overrides, and errors that say what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from bentoedge.bentos.errors import ConfigError
from bentoedge.edge import config as cfg


def base(tmp_path: Path) -> cfg.AgentConfig:
    return cfg.AgentConfig(device_id="dev-1", channel="file:///srv/ch", cloud="http://127.0.0.1:3000",
                           state=str(tmp_path), trusted_signers=("ab" * 32,),
                           limits=cfg.Limits(max_batch=4, latency_budget_ms=120.0))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    c = base(tmp_path)
    path = cfg.save(c)
    assert path == tmp_path / "agent.toml"
    assert path.stat().st_mode & 0o777 == 0o640
    assert cfg.load(path, env={}) == c


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = cfg.save(base(tmp_path))
    c = cfg.load(path, env={"BENTOEDGE_AGENT_PORT": "4001", "BENTOEDGE_AGENT_MODE": "edge_only",
                            "BENTOEDGE_AGENT_POLL_SECONDS": "1.5"})
    assert (c.port, c.mode, c.poll_seconds) == (4001, "edge_only", 1.5)


def test_config_is_found_through_env_then_default(tmp_path: Path) -> None:
    assert cfg.find_config(None, {"BENTOEDGE_AGENT_CONFIG": "/x/agent.toml"}) == Path("/x/agent.toml")
    assert cfg.find_config(None, {"BENTOEDGE_HOME": str(tmp_path)}) == tmp_path / "agent" / "agent.toml"
    assert cfg.find_config("/given.toml", {"BENTOEDGE_AGENT_CONFIG": "/x"}) == Path("/given.toml")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("device_id = 'a'\n", "lacks channel, cloud, state"),
        ("device_id = 'a'\nchannel='c'\ncloud='u'\nstate='s'\nmode='fastest'\n", "mode must be one of"),
        ("device_id = 'a'\nchannel='c'\ncloud='u'\nstate='s'\ncolour='red'\n", "unknown setting 'colour'"),
        ("device_id = 'a'\nchannel='c'\ncloud='u'\nstate='s'\n[limits]\nmax_bach=3\n", "bad [limits]"),
        ("device_id = \n", "not valid TOML"),
        ("device_id = 'a'\nchannel='c'\ncloud='u'\nstate='s'\n", "cloud must be an http"),
        ("device_id = 'a'\nchannel='c'\ncloud=''\nstate='s'\nport='x'\n", "port must be an integer"),
        ("device_id = 'a'\nchannel='c'\ncloud=''\nstate='s'\n[limits]\nmax_inflight='4'\n",
         "[limits] max_inflight must be an integer of at least 0"),
        ("device_id = 'a'\nchannel='c'\ncloud=''\nstate='s'\n[limits]\nlatency_budget_ms=-1\n",
         "latency_budget_ms must be a number of at least 0"),
        ("device_id = 'a'\nchannel='c'\ncloud=''\nstate='s'\ncloud_timeout_s=0\n", "cloud_timeout_s"),
    ],
)
def test_bad_configs_are_explained(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        cfg.load(path, env={})
    assert fragment in str(info.value)
    assert info.value.exit_code == 2


def test_missing_config_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bentoedge agent init"):
        cfg.load(tmp_path / "nope.toml", env={})


def test_bad_env_value_is_explained(tmp_path: Path) -> None:
    path = cfg.save(base(tmp_path))
    with pytest.raises(ConfigError, match="BENTOEDGE_AGENT_PORT"):
        cfg.load(path, env={"BENTOEDGE_AGENT_PORT": "eighty"})
