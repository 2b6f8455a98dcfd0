"""The cluster TOML: the shipped example parses, dump/parse round-trips, mistakes are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvstore import config
from kvstore.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_local_toml_parses() -> None:
    cfg = config.load(ROOT / "cluster" / "local.toml")
    assert [n.name for n in cfg.nodes] == ["n1", "n2", "n3"]
    assert cfg.limits.max_key >= 511 and cfg.limits.max_value >= 1 << 20
    assert cfg.local.socket_mode == 0o600


def test_dump_parse_round_trip() -> None:
    cfg = config.ClusterConfig(nodes=(config.NodeConfig("a", grpc_port=1), config.NodeConfig("b", "10.0.0.2", 2, 3,
                                                                                              "/s.sock"))).with_id()
    assert config.parse(config.dump(cfg)) == cfg


@pytest.mark.parametrize("text,msg", [
    ("[raft]\nelection_tick = 3\n", "unknown setting"),
    ("[raft]\ntick_ms = 'fast'\n", "must be int"),
    ("[[nodes]]\nhost = 'x'\n", "has no name"),
    ("[[nodes]]\nname = 'a'\n[[nodes]]\nname = 'a'\n", "unique"),
    ("[bogus]\n", "unknown section"),
    ("not toml at all [", "not valid TOML"),
])
def test_mistakes_are_clear(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        config.parse(text)


def test_unknown_node_name() -> None:
    cfg = config.parse("[[nodes]]\nname = 'n1'\n")
    with pytest.raises(UsageError, match="not in"):
        cfg.node("n9")


def test_three_hosts_example_parses() -> None:
    cfg = config.load(ROOT / "cluster" / "three-hosts.toml")
    assert cfg.tls.enabled and len({n.host for n in cfg.nodes}) == 3
