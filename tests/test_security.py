"""CurveZMQ on every socket, roles, revocation (docs/security.md).

Every test cluster runs with CURVE (tests/harness.py makes the keys as
`zwal cluster init` does); these tests attack it.
"""

from __future__ import annotations

import os
import signal
import time

import msgpack
import pytest
import zmq
import zmq.auth

from daemon import config as config_mod
from daemon.auth import keys
from daemon.client.blocking import Client, ZwalError
from daemon.wire.replication import Fetch, encode_fetch
from harness import wait_until


def plain(endpoint: str) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    return s


def with_key(endpoint: str, server_key: str, public: bytes, secret: bytes) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.curve_secretkey, s.curve_publickey, s.curve_serverkey = secret, public, server_key.encode()
    s.connect(endpoint)
    return s


FENCE = msgpack.packb({"id": 1, "op": "fence", "args": {"epoch": 999}})
GET = msgpack.packb({"id": 2, "op": "get", "key": b"k"})


def test_a_plain_socket_and_an_unknown_key_get_nothing_and_change_nothing(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    cfg = config_mod.load(c.config)
    ep = c.endpoint("node1")
    with c.client() as cl:
        cl.set("k", "v")
    s = plain(ep)  # the measured attack of issue 13: one message, no key
    s.send(FENCE)
    s.send(GET)
    assert not s.poll(1500)
    s.close()
    pub, sec = zmq.curve_keypair()  # a well-formed key the cluster never heard of
    s = with_key(ep, cfg.node("node1").public_key, pub, sec)
    s.send(FENCE)
    s.send(GET)
    assert not s.poll(1500)
    s.close()
    st = c.status("node1")
    assert st["epoch"] == 1 and st["role"] == "leader"
    log = open(c.node_log("node1")).read()
    assert "event=auth_denied" in log and pub.decode() in log
    # A stranger cannot read the replication endpoint either.
    r = plain(cfg.node("node1").repl_endpoint)
    r.send(encode_fetch(Fetch("x", 1, 0, 0)))
    assert not r.poll(1500)
    r.close()


def test_a_client_key_cannot_fence_and_gets_forbidden(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    with Client(config=c.config, timeout=1.0, deadline=3.0) as cl:
        with pytest.raises(ZwalError) as e:
            cl.admin("fence", c.endpoint("node1"), epoch=999)
        assert e.value.code == "forbidden"
        assert cl.get("nothing") is None  # the client role still reads
    with Client(config=c.config, role="admin", timeout=1.0, deadline=3.0) as adm:
        assert adm.status(endpoint=c.endpoint("node1"))["epoch"] == 1  # admins may look too
    assert c.status("node1")["epoch"] == 1
    assert "event=forbidden" in open(c.node_log("node1")).read()


def test_a_revoked_key_stops_working_after_sighup(make_cluster):
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    r = c.zwal("keys", "new", "alice", "--role", "client", "--config", c.config)
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(c.config)
    alice = keys.secret_path(cfg.keys_dir, "client", "alice")
    assert os.stat(alice).st_mode & 0o777 == 0o600
    with Client(config=c.config, cert=alice, timeout=1.0, deadline=3.0) as cl:
        with pytest.raises(ZwalError):  # not yet: the node has not re-read its keys
            cl.set("a", "1")
    c.signal("node1", signal.SIGHUP)
    wait_until(lambda: "event=keys_reloaded" in open(c.node_log("node1")).read(), 10, "the reload")
    cl = Client(config=c.config, cert=alice, timeout=1.0, deadline=3.0)
    assert cl.set("a", "1").offset == 0
    # Revoke: remove the public key, SIGHUP. The open connection stops working.
    os.unlink(os.path.join(keys.folder(cfg.keys_dir, "client"), "alice.key"))
    c.signal("node1", signal.SIGHUP)
    wait_until(lambda: open(c.node_log("node1")).read().count("event=keys_reloaded") >= 2, 10, "the second reload")
    with pytest.raises(ZwalError):
        cl.set("a", "2")
    cl.close()
    with c.client() as other:  # everyone else is unaffected
        assert other.get("a") == b"1"


def test_a_node_with_the_wrong_key_cannot_fetch(make_cluster):
    c = make_cluster(2, ack_replicas=0)
    c.start("node1")
    cfg = config_mod.load(c.config)
    leader = cfg.node("node1")
    with c.client() as cl:
        cl.set("secret", "s3cr3t")
    # A client key is known but may not replicate: it gets no log bytes.
    creds = c.creds("client")
    s = with_key(leader.repl_endpoint, leader.public_key, creds.public, creds.secret)
    s.send(encode_fetch(Fetch("node2", 1, 0, 0)))
    assert not s.poll(1500)
    s.close()
    # A node presenting a key that is not its cluster's gets no session.
    pub, sec = zmq.curve_keypair()
    s = with_key(leader.repl_endpoint, leader.public_key, pub, sec)
    s.send(encode_fetch(Fetch("node2", 1, 0, 0)))
    assert not s.poll(1500)
    s.close()
    # The real node2, with its own key, replicates.
    c.start("node2")
    c.wait_converged()


def test_security_none_is_refused_off_loopback(tmp_path):
    from daemon.cli.cmd_cluster import render

    text, _ = render(str(tmp_path), 1, 7000, 0, "t", None)
    text = text.replace("tcp://127.0.0.1:7001", "tcp://10.1.2.3:7001")
    p = tmp_path / "cluster.toml"
    p.write_text(text)
    with pytest.raises(config_mod.ConfigError, match='security = "none" is allowed only when every endpoint is on '
                                                     'loopback'):
        config_mod.load(str(p))


def test_cluster_init_makes_keys_with_private_secrets(tmp_path):
    import subprocess
    import sys

    from harness import free_base_port

    d = str(tmp_path / "c")
    # Free ports: init refuses ports already taken (make run's cluster may be up on 7100).
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "cluster", "init", d, "--nodes", "3",
                        "--base-port", str(free_base_port(12))],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cfg = config_mod.load(os.path.join(d, "cluster.toml"))
    assert cfg.security == "curve"
    reg = keys.load_registry(cfg.keys_dir)
    roles = sorted((i.role, i.name) for i in reg.values())
    assert roles == [("admin", "admin"), ("client", "client"), ("node", "node1"), ("node", "node2"), ("node", "node3")]
    for n in cfg.nodes:
        assert reg[n.public_key].name == n.name  # each [[node]] names its own public key
    for role, name in roles:
        assert os.stat(keys.secret_path(cfg.keys_dir, role, name)).st_mode & 0o777 == 0o600


def test_fuzzing_the_replication_endpoint_with_a_node_key_changes_nothing(make_cluster):
    """Past the gate with node2's own key: junk fetches change nothing on the
    leader, which stays up; the real node2 then replicates byte for byte."""
    import random

    from daemon.wire.replication import encode_fetch as enc

    c = make_cluster(2, ack_replicas=0)
    c.start("node1")
    with c.client() as cl:
        for i in range(5):
            cl.set(f"k{i}", "v")
    size = os.path.getsize(c.log_path("node1"))
    cfg = config_mod.load(c.config)
    leader = cfg.node("node1")
    creds = c.creds("node", "node2")
    s = with_key(leader.repl_endpoint, leader.public_key, creds.public, creds.secret)
    rnd = random.Random(7)
    for _ in range(400):
        pick = rnd.randrange(4)
        if pick == 0:
            s.send(rnd.randbytes(rnd.randrange(0, 300)))
        elif pick == 1:
            s.send(msgpack.packb({"t": rnd.choice(["fetch", "data", "nope", 3]), "name": rnd.choice(["node2", 5])}))
        elif pick == 2:
            s.send(enc(Fetch("node2", rnd.choice([0, 1, 2**63 - 1]), rnd.randrange(-5, 10**9), rnd.randrange(0, 4),
                             round=rnd.randrange(0, 10**6))))
        else:
            s.send_multipart([rnd.randbytes(4) for _ in range(rnd.randrange(2, 5))])
    s.close()
    assert c.ping("node1")
    assert os.path.getsize(c.log_path("node1")) == size
    assert c.status("node1")["epoch"] == 1
    c.start("node2")
    c.wait_converged()


def test_a_node_key_cannot_acknowledge_in_another_nodes_name(make_cluster):
    """K = 2 with only node1 up: node2's key sending fetches as node2 and node3
    must not make a write count as on three disks."""
    c = make_cluster(3, ack_replicas=2, replication_timeout=1.0)
    c.start("node1")
    cfg = config_mod.load(c.config)
    leader = cfg.node("node1")
    creds = c.creds("node", "node2")
    s = with_key(leader.repl_endpoint, leader.public_key, creds.public, creds.secret)
    with Client(config=c.config, timeout=1.0, deadline=2.5) as cl:
        import threading

        stop = threading.Event()

        def forge() -> None:
            while not stop.is_set():
                for name in ("node2", "node3"):
                    s.send(encode_fetch(Fetch(name, 1, 10**6, 1)))
                    s.send(encode_fetch(Fetch(name, 1, 89, 1)))
                stop.wait(0.02)

        t = threading.Thread(target=forge)
        t.start()
        try:
            with pytest.raises(ZwalError):
                cl.set("k", "v")  # node3's name is not node2's key: never two acks
        finally:
            stop.set()
            t.join()
    s.close()
    assert "reason=\"fetch in the name of 'node3'\"" in open(c.node_log("node1")).read()


def test_a_broken_reload_keeps_the_previous_allow_list(make_cluster, tmp_path):
    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    cfg = config_mod.load(c.config)
    moved = str(tmp_path / "moved-keys")
    os.rename(cfg.keys_dir, moved)  # an operator's slip: the keys directory is gone
    os.makedirs(cfg.keys_dir)
    c.signal("node1", signal.SIGHUP)
    wait_until(lambda: "event=keys_reload_refused" in open(c.node_log("node1")).read(), 10, "the refusal")
    os.rmdir(cfg.keys_dir)
    os.rename(moved, cfg.keys_dir)
    with c.client() as cl:
        assert cl.set("still", "in").offset == 0  # nobody was locked out
    assert c.alive("node1")


def test_loopback_means_a_literal_loopback_address():
    from daemon.config import is_loopback

    for ep in ("tcp://127.0.0.1:7101", "tcp://127.1.2.3:1", "tcp://localhost:7101", "tcp://[::1]:7101", "ipc:///tmp/x"):
        assert is_loopback(ep), ep
    for ep in ("tcp://127.0.0.1.attacker.example:7101", "tcp://0.0.0.0:7101", "tcp://*:7101",
               "tcp://10.0.0.1:7101", "tcp://127.0.0.1:1;10.0.0.1:7101", "tcp://[::]:7101"):
        assert not is_loopback(ep), ep


def test_a_secret_others_can_read_is_refused(tmp_path):
    d = str(tmp_path / "keys")
    keys.create(d, "client", "bob")
    path = keys.secret_path(d, "client", "bob")
    keys.load_secret(path)
    os.chmod(path, 0o644)
    with pytest.raises(keys.KeyError_, match="chmod 600"):
        keys.load_secret(path)


def test_a_flood_of_strangers_does_not_stop_good_clients(make_cluster):
    """300 connections with unknown keys keep handshaking and sending while a
    good client writes: its writes keep flowing, the strangers change nothing,
    and the log gets at most a bounded number of denial lines."""
    import threading
    import time as time_

    c = make_cluster(1, ack_replicas=0)
    c.start("node1")
    cfg = config_mod.load(c.config)
    ep, server_key = c.endpoint("node1"), cfg.node("node1").public_key
    stop = threading.Event()
    made = [0]

    def strangers() -> None:
        socks = []
        while not stop.is_set():
            for _ in range(50):
                pub, sec = zmq.curve_keypair()
                s = with_key(ep, server_key, pub, sec)
                s.send(FENCE)
                socks.append(s)
                made[0] += 1
            while len(socks) > 300:
                socks.pop(0).close()
            stop.wait(0.05)
        for s in socks:
            s.close()

    t = threading.Thread(target=strangers)
    t.start()
    lat = []
    try:
        with c.client() as cl:
            end = time_.monotonic() + 4.0
            while time_.monotonic() < end:
                t0 = time_.monotonic()
                cl.set(f"good{len(lat)}", "v")
                lat.append(time_.monotonic() - t0)
    finally:
        stop.set()
        t.join()
    lat.sort()
    # The good client keeps being served (tens of writes a second even on a loaded 2-core CI box, where
    # the strangers' handshakes and another test worker share the CPU); none waits long.
    assert made[0] > 1000 and len(lat) > 20, (made[0], len(lat))
    # Most writes wait little; a few may stall behind the machine's other work (a p99 of 0.85 s was seen
    # on CI with a drill beside it), which is load, not the strangers: the bound is on the bulk.
    assert lat[int(len(lat) * 0.9)] < 0.5, lat[-5:]
    assert c.status("node1")["epoch"] == 1
    denials = open(c.node_log("node1")).read().count("event=auth_denied ")
    assert denials <= 25, denials
    print(f"\n{made[0]} stranger connections; good client: {len(lat)} writes in 4 s, "
          f"p50 {lat[len(lat) // 2] * 1e3:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1e3:.1f} ms; {denials} denial lines")


def test_a_public_key_file_others_can_write_is_refused(tmp_path):
    d = str(tmp_path / "keys")
    keys.create(d, "admin", "root")
    keys.load_registry(d)
    os.chmod(os.path.join(keys.folder(d, "admin"), "root.key"), 0o666)
    with pytest.raises(keys.KeyError_, match="writable by others"):
        keys.load_registry(d)


def test_a_revoked_node_key_gets_not_even_its_parked_fetch_answered(make_cluster):
    """A follower's fetch waits at the leader (long poll). Revoking that node's
    key must stop it at once: the parked fetch gets no more log bytes."""
    c = make_cluster(2, ack_replicas=1, heartbeat_interval=5.0)
    c.start_all()
    with c.client() as cl:
        cl.set("before", "1")
    c.wait_converged()
    size = os.path.getsize(c.log_path("node2"))
    cfg = config_mod.load(c.config)
    os.unlink(os.path.join(keys.folder(cfg.keys_dir, "node"), "node2.key"))
    c.signal("node1", signal.SIGHUP)
    wait_until(lambda: "event=keys_reloaded" in open(c.node_log("node1")).read(), 10, "the reload")
    with Client(config=c.config, timeout=3.0, deadline=3.0) as cl:
        with pytest.raises(ZwalError):  # K=1 and the only follower is revoked
            cl.set("after", "2")
    time.sleep(0.5)
    assert os.path.getsize(c.log_path("node2")) == size, "the revoked node was sent log bytes"
