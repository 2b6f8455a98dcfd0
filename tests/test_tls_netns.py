"""Several hosts with mutual TLS: three nodes in three network namespaces, each with its own address.

Needs root and iproute2 (CI has both); skips with the reason elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import grpc
import pytest

from kvstore import config
from kvstore.cluster import manage
from kvstore.errors import KVError
from kvstore.rpc.client import GrpcClient
from kvstore.tls import CLIENT, channel_credentials, client_channel, init_certs

from clusterutil import leader, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="needs root and `ip` (iproute2) to create network namespaces",
)


def _netns() -> object:
    from kvstore.drills.netns import NetnsNetwork

    try:
        return NetnsNetwork({"n1": "", "n2": "", "n3": ""}, seed=7)
    except KVError as e:  # e.g. a container without CAP_NET_ADMIN
        pytest.skip(f"cannot create network namespaces here: {e}")


def test_three_hosts_with_mutual_tls(tmp_path: Path) -> None:
    net = _netns()
    d = tmp_path
    try:
        hosts = net.hosts  # type: ignore[attr-defined]
        cfg = manage.create(d, 3, None)
        nodes = tuple(dataclasses.replace(n, host=hosts[n.name], grpc_port=7001, metrics_port=9101)
                      for n in cfg.nodes)
        cfg = dataclasses.replace(cfg, nodes=nodes, tls=dataclasses.replace(cfg.tls, enabled=True))
        manage.config_path(d).write_text(config.dump(cfg))
        cfg = manage.load(d)
        files = init_certs(cfg, d / "certs")
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in files)
        for n in cfg.nodes:
            net.spawn(d, manage.config_path(d), n.name, {})  # type: ignore[attr-defined]
        ld = wait_until(lambda: leader(d), timeout=30, what="a leader across namespaces")
        # a remote client with the cluster's client certificate, from outside the namespaces
        for i, n in enumerate(cfg.nodes):
            with GrpcClient(n.grpc_address, channel=client_channel(cfg, d, n.grpc_address, n.name)) as c:
                wait_until(lambda c=c, i=i: c.put(f"k{i}".encode(), f"v{i}".encode()), what=f"a put at {n.name}")
        for n in cfg.nodes:
            with GrpcClient(n.grpc_address, channel=client_channel(cfg, d, n.grpc_address, n.name)) as c:
                assert [c.get(f"k{i}".encode()) for i in range(3)] == [b"v0", b"v1", b"v2"]
        # no certificate: refused
        addr = cfg.node(ld).grpc_address
        with GrpcClient(addr, timeout=3) as c, pytest.raises(KVError):
            c.get(b"k0")
        # a certificate from another CA: refused
        other = dataclasses.replace(cfg, id="other")
        init_certs(other, tmp_path / "othercerts")
        creds = channel_credentials(dataclasses.replace(cfg, tls=dataclasses.replace(
            cfg.tls, ca=str(tmp_path / "othercerts/ca.pem"), cert=str(tmp_path / "othercerts/{node}.pem"),
            key=str(tmp_path / "othercerts/{node}.key"))), tmp_path, CLIENT)
        ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", ld)])
        with GrpcClient(addr, channel=ch, timeout=3) as c, pytest.raises(KVError):
            c.get(b"k0")
        assert "BEGIN" not in "".join((d / n.name / "node.log").read_text() for n in cfg.nodes)
    finally:
        try:
            manage.down(d, grace=5.0)
        finally:
            net.close()  # type: ignore[attr-defined]
