"""The CLI conventions of issue 14, as a user (or a script) runs them: real processes, real clusters.

--version, --json, values from stdin or a file, get --raw, ZWAL_CONFIG,
`zwal config check`, `status --watch/--check` and its PID column,
`log dump --from/--skip-damaged`, shell completion, timeout messages that
say the real timeout and every endpoint, and a drill that refuses K = 0.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT
from harness import free_base_port, wait_until

ZWAL = [sys.executable, "-m", "daemon.cli"]
MAX_VALUE = 1024 * 1024


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("ZWAL_CONFIG", "_ARGCOMPLETE", "COMP_"))}
    e.update(extra)
    return e


def zwal(*args: str, stdin: bytes | None = None, timeout: float = 60, **envs: str) -> subprocess.CompletedProcess:
    """Run zwal; stdout and stderr are bytes (binary values), decode with .stdout.decode()."""
    return subprocess.run([*ZWAL, *args], input=stdin, capture_output=True, timeout=timeout, cwd=ROOT, env=env(**envs))


def out(r: subprocess.CompletedProcess) -> str:
    return r.stdout.decode()


def err(r: subprocess.CompletedProcess) -> str:
    return r.stderr.decode()


def one_json(r: subprocess.CompletedProcess) -> dict:
    """stdout must be exactly one JSON document."""
    return json.loads(out(r))


def init_cluster(d: str, nodes: int = 3, k: int | None = None) -> str:
    args = ["cluster", "init", d, "--nodes", str(nodes), "--base-port", str(free_base_port(3 * nodes + 3))]
    if k is not None:
        args += ["--ack-replicas", str(k)]
    r = zwal(*args)
    assert r.returncode == 0, err(r)
    return os.path.join(d, "cluster.toml")


# -- offline ---------------------------------------------------------------------------------------


def test_version_is_the_installed_distribution_version():
    from importlib.metadata import version

    r = zwal("--version")
    assert r.returncode == 0
    assert out(r).strip() == f"zwal {version('zwal')}"


def test_completion_of_zwal_s_offers_set_snapshot_and_status(tmp_path):
    """The argcomplete protocol, as bash's completion function drives it."""
    result = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        r = zwal(_ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\n", COMP_LINE=line, COMP_POINT=str(len(line)),
                 _ARGCOMPLETE_STDOUT_FILENAME=str(result), timeout=30)
        assert r.returncode == 0, err(r)
        return [c.strip() for c in result.read_text().split("\n")]

    assert sorted(complete("zwal s")) == ["set", "snapshot", "status"]
    assert {"--watch", "--wait"} <= set(complete("zwal status --w"))
    assert "--skip-damaged" in complete("zwal log dump x --sk")
    code = zwal("completion", "bash")
    assert code.returncode == 0 and "complete" in out(code) and "zwal" in out(code)


def test_zwal_config_is_the_default_config_and_an_explicit_one_wins(tmp_path):
    envf, explicit = str(tmp_path / "from-env.toml"), str(tmp_path / "explicit.toml")
    for args in (("status",), ("set", "k", "v"), ("get", "k"), ("del", "k"), ("promote", "node2"),
                 ("keys", "list"), ("node", "--name", "node1")):
        r = zwal(*args, ZWAL_CONFIG=envf)
        assert r.returncode == 2 and "from-env.toml: no such cluster file" in err(r), (args, err(r))
        r = zwal(*args, "--config", explicit, ZWAL_CONFIG=envf)
        assert r.returncode == 2 and "explicit.toml" in err(r) and "from-env" not in err(r), (args, err(r))
    r = zwal("promote", "node2")  # no ZWAL_CONFIG: --config is still required
    assert r.returncode == 2 and "--config" in err(r)
    for args in (("status", "--help"), ("promote", "--help"), ("drill", "--help")):
        assert "ZWAL_CONFIG" in out(zwal(*args))
    r = zwal("config", "check", ZWAL_CONFIG=envf)
    assert r.returncode == 1 and "from-env.toml" in out(r)


def test_json_errors_are_one_document_on_stdout(tmp_path):
    r = zwal("status", "--json", "--config", str(tmp_path / "nope.toml"))
    doc = one_json(r)
    assert r.returncode == 2 and doc["ok"] is False and doc["error"] == "config" and doc["exit_code"] == 2
    assert "nope.toml" in doc["message"]
    r = zwal("set", "--json")  # a usage error, still JSON
    doc = one_json(r)
    assert r.returncode == 2 and doc["error"] == "usage"


def test_timeout_message_states_the_real_timeout_and_every_endpoint():
    base = free_base_port(6)
    a, b = f"tcp://127.0.0.1:{base + 1}", f"tcp://127.0.0.1:{base + 4}"  # nothing listens there
    t0 = time.monotonic()
    r = zwal("get", "k", "--endpoint", a, "--endpoint", b, "--timeout", "2.5")
    took = time.monotonic() - t0
    assert r.returncode == 1 and took >= 2.5
    line = err(r).strip()
    assert len(line.splitlines()) == 1, line
    assert "within 2.5s" in line and a in line and b in line, line
    assert "1.0s" not in line.split("attempt")[0], line
    doc = one_json(zwal("set", "k", "v", "--endpoint", a, "--timeout", "1.5", "--json"))
    assert doc["ok"] is False and doc["error"] == "unavailable" and "within 1.5s" in doc["message"]


def test_timeout_message_of_the_client_library():
    from daemon.client.blocking import Client, Unavailable

    base = free_base_port(6)
    eps = [f"tcp://127.0.0.1:{base + 1}", f"tcp://127.0.0.1:{base + 4}"]
    with Client(eps, timeout=0.3, deadline=1.2) as c:
        with pytest.raises(Unavailable) as e:
            c.set("k", "v")
    assert "within 1.2s" in str(e.value) and all(ep in str(e.value) for ep in eps), str(e.value)


def test_drill_refuses_a_k0_cluster_at_once_with_the_reason(tmp_path):
    cfg = init_cluster(str(tmp_path / "k0"), nodes=3, k=0)  # its nodes are not even running
    t0 = time.monotonic()
    r = zwal("drill", "--config", cfg, "--timeout", "60")
    assert time.monotonic() - t0 < 15
    assert r.returncode == 2 and "ack_replicas = 0" in err(r) and "retrying" not in out(r) + err(r), err(r)
    doc = one_json(zwal("drill", "--config", cfg, "--json"))
    assert doc["ok"] is False and doc["error"] == "ack_replicas_0"
    r = zwal("drill", ZWAL_CONFIG=cfg)  # the cluster of $ZWAL_CONFIG, refused the same way
    assert r.returncode == 2 and "ack_replicas = 0" in err(r) and "ZWAL_CONFIG" in err(r)
    from daemon import config
    from daemon.failover.drill import Drill, DrillError

    with pytest.raises(DrillError, match="ack_replicas = 0"):
        Drill(config.load(cfg))


# -- zwal config check ------------------------------------------------------------------------------


def _edit(path: str, old: str, new: str) -> None:
    text = open(path).read()
    assert old in text, old
    with open(path, "w") as f:
        f.write(text.replace(old, new, 1))


def test_config_check_passes_a_fresh_cluster_and_names_each_broken_setting(tmp_path):
    import shutil

    good = init_cluster(str(tmp_path / "good"), nodes=3)
    r = zwal("config", "check", good)
    assert r.returncode == 0, out(r) + err(r)
    for what in ("parse and rules", "endpoints and ports", "[[node]] node2 data_dir", "[[node]] node3 public_key",
                 "client certificate", "valid"):
        assert what in out(r), (what, out(r))
    doc = one_json(zwal("config", "check", good, "--json"))
    assert doc["ok"] is True and doc["errors"] == 0 and any(c["check"] == "[[node]] node1 public_key"
                                                             for c in doc["checks"])
    text = open(good).read()
    ports = [int(p) for p in re.findall(r"tcp://127\.0\.0\.1:(\d+)", text)]
    keys = re.findall(r'public_key = "([^"]+)"', text)

    def broken(name: str, edit) -> subprocess.CompletedProcess:  # type: ignore[no-untyped-def]
        d = str(tmp_path / name)
        shutil.copytree(str(tmp_path / "good"), d, symlinks=True)
        path = os.path.join(d, "cluster.toml")
        edit(d, path)
        r = zwal("config", "check", path)
        assert r.returncode == 1, (name, out(r))
        assert "FAIL" in out(r) and "problem(s)" in err(r)
        return r

    # a rule of daemon/config.py
    r = broken("k5", lambda d, p: _edit(p, "ack_replicas = 1", "ack_replicas = 5"))
    assert "ack_replicas = 5" in out(r)
    # the same port, spelled differently
    r = broken("dup", lambda d, p: _edit(p, f"tcp://127.0.0.1:{ports[3]}\"", f"tcp://localhost:{ports[0]}\""))
    assert re.search(rf"FAIL \[\[node\]\] node2 repl_endpoint .*port {ports[0]} on 127\.0\.0\.1 is also "
                     r"\[\[node\]\] node1 client_endpoint", out(r)), out(r)
    # a metrics port that is another node's replication port
    r = broken("metrics", lambda d, p: _edit(p, f"metrics_port = {ports[0] + 2}", f"metrics_port = {ports[3]}"))
    assert "FAIL [[node]] node1 metrics_port" in out(r) or "FAIL [[node]] node2 repl_endpoint" in out(r), out(r)
    # a public_key that is another node's
    r = broken("swapped", lambda d, p: _edit(p, f'public_key = "{keys[0]}"', f'public_key = "{keys[1]}"'))
    assert re.search(r"FAIL \[\[node\]\] node1 public_key: does not match .*nodes/node1\.key", out(r)), out(r)
    # a missing public key file
    r = broken("nokey", lambda d, p: os.remove(os.path.join(d, "keys", "nodes", "node3.key")))
    assert re.search(r"FAIL \[\[node\]\] node3 public_key: .*node3\.key is missing", out(r)), out(r)
    # a secret others may read
    r = broken("mode", lambda d, p: os.chmod(os.path.join(d, "keys", "nodes", "node2.key_secret"), 0o644))
    assert "FAIL [[node]] node2 public_key" in out(r) and "chmod 600" in out(r), out(r)
    # a data directory that cannot be created (under a regular file; a permission bit would not stop root)
    r = broken("datadir", lambda d, p: _edit(p, 'data_dir = "node2"', 'data_dir = "cluster.toml/node2"'))
    assert re.search(r"FAIL \[\[node\]\] node2 data_dir: .* cannot be created", out(r)), out(r)
    # two nodes on one data directory
    r = broken("shared", lambda d, p: _edit(p, 'data_dir = "node2"', 'data_dir = "node1"'))
    assert "FAIL [[node]] node2 data_dir" in out(r) and "node1's data_dir" in out(r), out(r)


# -- zwal log dump --from --skip-damaged ------------------------------------------------------------------


def _log_with_records(path: str, n: int) -> list[int]:
    from daemon.wal import Record, open_log

    w, _ = open_log(path)
    offsets = [w.append(Record("set", f"k{i}".encode(), f"value-{i}".encode() * 3))[0] for i in range(n)]
    w.close()
    return offsets + [os.path.getsize(path)]


def _flip(path: str, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def _rows(r: subprocess.CompletedProcess) -> list[dict]:
    return [json.loads(x) for x in out(r).splitlines()]


def test_log_dump_skips_damaged_ranges_and_reports_them(tmp_path):
    path = str(tmp_path / "wal.log")
    offs = _log_with_records(path, 8)
    _flip(path, offs[2] + 25)  # the payload of record 2: its checksum fails
    _flip(path, offs[5] + 17)  # the magic of record 5's header
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()

    plain = zwal("log", "dump", path)  # stops at the first bad frame, as before, and says how to go on
    assert plain.returncode == 2 and [r["key"] for r in _rows(plain)] == ["k0", "k1"]
    assert "--skip-damaged" in err(plain)

    r = zwal("log", "dump", path, "--skip-damaged")
    assert r.returncode == 2, err(r)
    rows = _rows(r)
    assert [x.get("key") for x in rows if "key" in x] == ["k0", "k1", "k3", "k4", "k6", "k7"]
    damaged = [x for x in rows if x.get("damaged")]
    assert [(x["offset"], x["length"], x["resync"]) for x in damaged] == [
        (offs[2], offs[3] - offs[2], offs[3]), (offs[5], offs[6] - offs[5], offs[6])]
    assert f"offset {offs[2]}: {offs[3] - offs[2]} damaged byte(s)" in err(r)
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest  # read-only

    # --from a frame boundary after the damage
    r = zwal("log", "dump", path, "--from", str(offs[6]))
    assert r.returncode == 0 and [x["key"] for x in _rows(r)] == ["k6", "k7"], err(r)
    # --from a frame boundary before the damage stops there again
    r = zwal("log", "dump", path, "--from", str(offs[3]))
    assert r.returncode == 2 and [x["key"] for x in _rows(r)] == ["k3", "k4"]


def test_log_dump_from_must_be_a_frame_boundary_unless_resyncing(tmp_path):
    path = str(tmp_path / "wal.log")
    offs = _log_with_records(path, 4)
    inside = offs[1] + 7
    r = zwal("log", "dump", path, "--from", str(inside))
    assert r.returncode == 4 and out(r) == ""
    assert f"inside the frame at offset {offs[1]}" in err(r) and f"{offs[2]}" in err(r), err(r)
    r = zwal("log", "dump", path, "--from", str(inside), "--skip-damaged")
    rows = _rows(r)
    assert rows[0]["damaged"] and rows[0]["offset"] == inside and rows[0]["resync"] == offs[2]
    assert [x["key"] for x in rows[1:]] == ["k2", "k3"]
    assert r.returncode == 2  # what was skipped is reported, with the exit code of corruption
    r = zwal("log", "dump", path, "--from", str(offs[-1] + 1))
    assert r.returncode == 4 and "past the end" in err(r)


def test_log_dump_skip_damaged_reports_a_torn_tail(tmp_path):
    path = str(tmp_path / "wal.log")
    offs = _log_with_records(path, 3)
    with open(path, "ab") as f:
        f.write(b"\x00" * 30)
    r = zwal("log", "dump", path, "--skip-damaged")
    assert r.returncode == 1  # a torn tail, as verify says
    rows = _rows(r)
    assert rows[-1] == {"damaged": True, "offset": offs[-1], "length": 30, "reason": "bad header (magic, version, "
                        "flags or length)", "resync": None}


# -- against a running cluster ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_node(tmp_path_factory):
    from harness import Cluster

    c = Cluster(str(tmp_path_factory.mktemp("cli") / "c"), 1, 0)
    c.start_all()
    yield c
    c.close()


def test_set_from_stdin_and_file_and_get_raw_are_binary_exact(one_node, tmp_path):
    cfg = one_node.config
    value = bytes(range(256)) * (MAX_VALUE // 256)  # exactly the protocol's limit, every byte value
    assert len(value) == MAX_VALUE
    r = zwal("set", "blob", "-", "--config", cfg, "--json", stdin=value)
    assert r.returncode == 0, out(r) + err(r)
    doc = one_json(r)
    assert doc["ok"] and doc["op"] == "set" and doc["key"] == "blob" and doc["end"] > doc["offset"] >= 0
    g = zwal("get", "blob", "--raw", "--config", cfg)
    assert g.returncode == 0 and g.stdout == value
    g = zwal("get", "blob", "--config", cfg)  # the human default: a newline after the value
    assert g.stdout == value + b"\n"
    gj = one_json(zwal("get", "blob", "--config", cfg, "--json"))
    import base64

    assert gj["found"] and base64.b64decode(gj["value"]["base64"]) == value and gj["node"] == "node1"

    f = tmp_path / "v.bin"
    f.write_bytes(b"\x00from a file\xff\n")
    assert zwal("set", "fromfile", "--value-file", str(f), "--config", cfg).returncode == 0
    assert zwal("get", "fromfile", "--raw", "--config", cfg).stdout == b"\x00from a file\xff\n"

    over = zwal("set", "big", "-", "--config", cfg, stdin=value + b"!")
    assert over.returncode == 2 and "over the protocol's limit of 1048576 bytes" in err(over)
    assert "nothing was written" in err(over)
    doc = one_json(zwal("set", "big", "--value-file", str(f), "x", "--config", cfg, "--json"))
    assert doc["ok"] is False and doc["error"] == "usage"
    empty = zwal("set", "big", "-", "--config", cfg, stdin=b"")
    assert empty.returncode == 2 and "empty" in err(empty)
    missing = zwal("get", "big", "--config", cfg, "--json")
    assert missing.returncode == 1 and one_json(missing)["found"] is False

    d = one_json(zwal("del", "fromfile", "--json", ZWAL_CONFIG=cfg))  # ZWAL_CONFIG alone finds the cluster
    assert d["ok"] and d["op"] == "del"
    assert zwal("get", "fromfile", ZWAL_CONFIG=cfg).returncode == 1


def test_status_has_a_pid_column_and_check_passes_with_a_leader(one_node):
    cfg = one_node.config
    pid = one_node.procs["node1"].pid
    r = zwal("status", "--config", cfg)
    assert r.returncode == 0
    header, row = out(r).splitlines()[:2]
    cols = header.split()
    assert "PID" in cols and row.split()[cols.index("PID")] == str(pid), out(r)
    doc = one_json(zwal("status", "--json", ZWAL_CONFIG=cfg))
    assert doc["ok"] and doc["leader"] == "node1" and doc["nodes"]["node1"]["pid"] == pid
    assert zwal("status", "--check", "--config", cfg).returncode == 0


@pytest.mark.parametrize("as_json", [False, True])
def test_status_watch_refreshes_until_ctrl_c(one_node, as_json):
    args = [*ZWAL, "status", "--watch", "--interval", "0.3", "--config", one_node.config] + (["--json"] if as_json else [])
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env())
    time.sleep(2.0)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=15)
    assert p.returncode == 0 and b"Traceback" not in stderr, stderr
    text = stdout.decode()
    if as_json:
        docs = [json.loads(x) for x in text.splitlines()]
        assert len(docs) >= 3 and all(d["leader"] == "node1" for d in docs)
    else:
        assert text.count("PID") >= 3 and "node1" in text and "Ctrl-C" in text


def test_status_check_and_promote_json_when_the_leader_is_gone(make_cluster):
    c = make_cluster(3, 1)
    c.start_all()
    cfg = c.config
    wait_until(lambda: zwal("status", "--config", cfg, "--wait", "10").returncode == 0
               and "in sync" in out(zwal("status", "--config", cfg)), 30, "followers in sync")
    assert zwal("status", "--check", "--config", cfg).returncode == 0
    c.kill("node1")
    plain = zwal("status", "--config", cfg, "--timeout", "1")
    assert plain.returncode == 0 and "no leader answered" in err(plain)  # plain status: nodes answer, exit 0
    chk = zwal("status", "--check", "--config", cfg, "--timeout", "1")
    assert chk.returncode == 3 and "no leader answered" in err(chk), err(chk)
    doc = one_json(zwal("status", "--check", "--json", "--config", cfg, "--timeout", "1"))
    assert doc["leader"] is None and doc["answered"] == 2 and doc["nodes"]["node1"] is None

    p = zwal("promote", "node2", "--config", cfg, "--json")
    assert p.returncode == 0, out(p) + err(p)
    doc = one_json(p)
    assert doc["ok"] and doc["name"] == "node2" and doc["epoch"] == 2 and isinstance(doc["start_offset"], int)
    again = zwal("promote", "node2", "--config", cfg, "--json")
    doc = one_json(again)
    assert again.returncode == 1 and doc == {"ok": False, "error": "refused", "exit_code": 1,
                                             "message": "refusing to promote node2: node2 already leads epoch 2"}
    assert zwal("status", "--check", "--config", cfg).returncode == 0
    for n in ("node2", "node3"):
        c.kill(n)
    none = zwal("status", "--check", "--config", cfg, "--timeout", "1")
    assert none.returncode == 1 and "no node answered within 1s" in err(none)


@pytest.mark.slow
def test_drill_json_is_one_document_with_the_verdict():
    r = subprocess.run([*ZWAL, "drill", "--rounds", "1", "--seconds", "1", "--json"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, env=env())
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["ok"] is True and doc["lost"] == 0 and len(doc["rounds"]) == 1
    rnd = doc["rounds"][0]
    assert rnd["fault"] == "kill" and rnd["acked"] > 0 and rnd["logs_identical"] and rnd["lost"] == []
    assert "round 1:" in r.stderr  # the progress went to stderr


def test_endpoint_with_config_keeps_the_cluster_keys(one_node):
    """--endpoint narrows the cluster file's nodes; it used to drop the file's
    keys, so a CURVE cluster never answered (found by the README walkthrough)."""
    cfg = one_node.config
    ep = one_node.endpoint("node1")
    assert zwal("set", "narrowed", "yes", "--config", cfg, "--endpoint", ep).returncode == 0
    r = zwal("get", "narrowed", "--config", cfg, "--endpoint", ep)
    assert r.returncode == 0 and out(r).strip() == "yes", r.stdout + r.stderr
