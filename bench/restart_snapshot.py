"""Restart time from a snapshot vs a full replay (docs/format.md, "Restart time").

    .venv/bin/python bench/restart_snapshot.py WAL_LOG SCRATCH_DIR   (a log made by bench/gen_log.py)
"""
import os, sys, time, shutil, cProfile, pstats, io
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from daemon import config as config_mod
from daemon.node import snapshot as snap
from daemon.node.node import Node
from daemon.node.kv import KVState
from daemon.wal.reader import scan_path
from daemon.wal.format import Record, encode_frame
from daemon.ops import logs
root = sys.argv[2]
shutil.rmtree(root, ignore_errors=True); os.makedirs(root)
open(f'{root}/cluster.toml','w').write('[cluster]\nbootstrap_leader = "node1"\nsecurity = "none"\n[[node]]\nname = "node1"\ndata_dir = "n1"\nclient_endpoint = "tcp://127.0.0.1:1"\nrepl_endpoint = "tcp://127.0.0.1:2"\n')
logs.setup(node='bench', stream=open(os.path.join(root, 'node.log'), 'w'))
node = Node(config_mod.load(f'{root}/cluster.toml'), 'node1')
shutil.copy(sys.argv[1], node.me.log_path)
t0 = time.perf_counter(); kv = KVState(); scan_path(node.me.log_path, kv.apply_frame); full = time.perf_counter() - t0
print(f"full replay (scan + KV apply) {full:.2f} s, {kv.records} records, {len(kv.data)} keys, {len(kv.window)} window ids", flush=True)
with open(node.me.log_path, 'rb') as f:
    f.seek(kv.last.offset); crc = int.from_bytes(f.read(4), 'little')
t0 = time.perf_counter(); parts = snap.encode(kv, crc); path = snap.write_file(snap.snapshot_dir(node.me.data_dir), kv.end, parts)
print(f"snapshot written in {time.perf_counter() - t0:.2f} s, {sum(map(len, parts))} bytes", flush=True)
with open(node.me.log_path, 'ab') as f:
    f.write(b''.join(encode_frame(Record('set', b'key-%08d' % i, b't' * 128, b'client-%d' % (i % 50), 10**7 + i, 1_700_000_200_000 + i), 2) for i in range(10000)))
t0 = time.perf_counter(); loaded = snap.decode(snap.read(path), 300.0); dec = time.perf_counter() - t0
print(f"snapshot decode alone {dec:.2f} s", flush=True)
pr = cProfile.Profile()
t0 = time.perf_counter(); pr.enable(); node.open_log(); pr.disable(); rec = time.perf_counter() - t0
print(f"restart recovery from snapshot + 10000-record tail: {rec:.2f} s (replayed {node.scan.replayed}, records {node.kv.records})", flush=True)
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats('cumulative').print_stats(12); print(s.getvalue()[:3000])
