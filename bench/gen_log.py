"""A synthetic log: N records over K keys, 50 client ids (bench/restart_snapshot.py).

    .venv/bin/python bench/gen_log.py OUT.log 2000000 200000
"""
import os, sys, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from daemon.wal.format import Record, encode_frame
path = sys.argv[1]; n = int(sys.argv[2]); keys = int(sys.argv[3])
val = b'v' * 120
t0 = time.time()
with open(path, 'wb') as f:
    buf = []
    ts = 1_700_000_000_000
    for i in range(n):
        r = Record('set', b'key-%08d' % (i % keys), val + b'%08d' % i, b'client-%d' % (i % 50), i, ts + i // 10)
        buf.append(encode_frame(r, 1 + i // 1_000_000))
        if len(buf) >= 10000:
            f.write(b''.join(buf)); buf = []
    f.write(b''.join(buf))
print('wrote', os.path.getsize(path), 'bytes in', time.time() - t0)
