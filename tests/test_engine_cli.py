"""`zwal log ...` as a user runs it: real processes, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT
from daemon.wal import open_log


def zwal(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemon.cli", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_append_dump_verify(log_path):
    a = zwal("log", "append", log_path, "set", "greeting", "héllo")
    assert a.returncode == 0 and a.stdout.strip().startswith("offset=0 size=")
    b = zwal("log", "append", log_path, "del", "greeting")
    assert b.returncode == 0
    size_a = int(a.stdout.split("size=")[1])
    assert b.stdout.startswith(f"offset={size_a} ")
    w, _ = open_log(log_path)
    from daemon.wal import Record

    w.append(Record("set", b"\xff\xfe", b"\xc3\x28"))
    w.close()
    d = zwal("log", "dump", log_path)
    assert d.returncode == 0
    rows = [json.loads(x) for x in d.stdout.splitlines()]
    assert rows[0] == {"offset": 0, "size": size_a, "epoch": 0, "op": "set", "key": "greeting", "value": "héllo"}
    assert rows[1]["op"] == "del" and "value" not in rows[1]
    assert rows[2]["key"] == {"base64": "//4="} and rows[2]["value"] == {"base64": "wyg="}
    v = zwal("log", "verify", log_path)
    assert v.returncode == 0 and "clean: 3 records" in v.stdout


def test_verify_and_recover_exit_codes(log_path):
    for i in range(3):
        assert zwal("log", "append", log_path, "set", f"k{i}", "v").returncode == 0
    size = os.path.getsize(log_path)
    with open(log_path, "ab") as f:
        f.write(b"\x07" * 9)
    v = zwal("log", "verify", log_path)
    assert v.returncode == 1 and f"torn tail at offset {size}" in v.stdout
    assert os.path.getsize(log_path) == size + 9  # verify is read-only
    r = zwal("log", "recover", log_path)
    assert r.returncode == 0 and f"dropped 9 bytes at offset {size}" in r.stdout
    assert os.path.getsize(log_path) == size
    # Corruption in the middle: exit 2 for both, file untouched by recover.
    data = bytearray(open(log_path, "rb").read())
    data[30] ^= 0x10
    open(log_path, "wb").write(bytes(data))
    v = zwal("log", "verify", log_path)
    assert v.returncode == 2 and "corruption at offset 0" in v.stdout
    r = zwal("log", "recover", log_path)
    assert r.returncode == 2 and open(log_path, "rb").read() == bytes(data)


def test_bad_paths_give_one_line_errors(tmp_path):
    for args in (("log", "verify", str(tmp_path / "missing.wal")), ("log", "dump", str(tmp_path)),
                 ("log", "recover", str(tmp_path)), ("log", "append", str(tmp_path / "no" / "dir.wal"), "set", "k", "v")):
        r = zwal(*args)
        assert r.returncode != 0, args
        assert "Traceback" not in r.stderr + r.stdout
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("zwal: "), r.stderr
    os.chmod(tmp_path, 0o700)


def test_append_to_a_locked_log_fails_clearly(log_path):
    w, _ = open_log(log_path)
    try:
        r = zwal("log", "append", log_path, "set", "k", "v")
        assert r.returncode != 0 and "locked" in r.stderr and "Traceback" not in r.stderr
    finally:
        w.close()


def test_log_recover_on_a_nodes_log_records_the_cut_as_the_node_would(tmp_path):
    """A damaged last record cut by `zwal log recover` beside node-state.json
    marks the node damaged (damaged_end, confirm_from for a leader), so
    promotion never counts it as a copy of the record the cut removed."""
    from daemon.node import identity
    from daemon.node.identity import NodeState
    from daemon.wal import Record, iter_frames

    log = str(tmp_path / "wal.log")
    w, _ = open_log(log)
    for i in range(3):
        w.append(Record("set", f"k{i}".encode(), b"v"), epoch=1)
    last = w.end  # the end before the damage
    w.close()
    state_path = str(tmp_path / "node-state.json")
    identity.save(state_path, NodeState("leader", 1, "node1", [(1, 0)], led_epoch=1, voted_for="node1"))
    data = bytearray(open(log, "rb").read())
    frames = [f.offset for f in iter_frames(log)]
    data[frames[-1] + 16] ^= 0x01  # the last record's magic: a garbage tail now
    open(log, "wb").write(bytes(data))
    r = zwal("log", "recover", log)
    assert r.returncode == 0 and f"dropped {last - frames[-1]} bytes at offset {frames[-1]}" in r.stdout, r.stdout
    st = identity.load(state_path)
    assert st.damaged_end == last and st.confirm_from == frames[-1], st
