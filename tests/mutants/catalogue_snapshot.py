"""Mutants of snapshots (issue 20, build item 2): each breaks one rule of docs/format.md, "Snapshots"."""

from tests.mutants.model import Mutant

S = "daemon/node/snapshot.py"
L = "daemon/node/snapshot_load.py"
P = "daemon/node/snapshotting.py"
T = "tests/test_snapshots.py::"

MUTANTS = [
    Mutant(id="snapshot-skip-chunk-checksum", file=S,
           find="        if zlib.crc32(buf[pos + 4:end]) != crc:\n",
           replace="        if False:\n",
           why="a snapshot whose chunk fails its checksum is never used (renamed .broken, logged)",
           killers=[T + "test_a_damaged_chunk_is_named", T + "test_broken_snapshot_is_renamed_and_the_older_one_used"]),
    Mutant(id="snapshot-uncommitted-offset", file=P,
           find="    if busy or commit is None or kv_end > commit or kv_end <= newest or kv_end == 0:",
           replace="    if busy or kv_end <= newest or kv_end == 0:",
           why="a snapshot is taken only at an offset the node knows to be committed",
           killers=[T + "test_no_snapshot_beyond_the_commit_point"]),
    Mutant(id="snapshot-used-beyond-the-log-end", file="daemon/node/node.py",
           find="                    snapshot_load.set_aside(path, str(e), True, self.events)\n                continue",
           replace="                    raise\n                continue",
           why="a snapshot whose offset is beyond the recovered log's end is not used: the log is the truth",
           killers=[T + "test_snapshot_beyond_the_log_end_is_not_used"]),
    Mutant(id="snapshot-rename-before-fsync", file=S,
           find="        os.fsync(fd)\n    finally:\n        os.close(fd)\n    os.rename(tmp, path)",
           replace="        os.rename(tmp, path)\n    finally:\n        os.close(fd)\n    os.fsync(os.open(path, os.O_RDONLY))",
           why="the bytes are durable before the name points at them (temp file, fsync, rename, fsync dir)",
           killers=[T + "test_rename_comes_after_the_fsync"]),
    Mutant(id="snapshot-prefix-crc-not-checked", file=L,
           find="epoch != h.last_epoch or crc != h.last_crc:",
           replace="False:",
           why="a snapshot is used only if the log still holds the frame it says ends at its offset",
           killers=[T + "test_snapshot_of_another_log_prefix_is_not_used"]),
    Mutant(id="snapshot-truncation-keeps-it", file=P,
           find="            if off > offset:\n                moved = self.port.move_aside(off, \"truncated\")",
           replace="            if False:\n                moved = self.port.move_aside(off, \"truncated\")",
           why="a truncation below a snapshot's offset moves the snapshot aside before the cut",
           killers=[T + "test_truncation_below_a_snapshot_moves_it_aside"]),
    Mutant(id="snapshot-keeps-all", file=P,
           find="        for off in self.port.offsets()[2:]:",
           replace="        for off in self.port.offsets()[99:]:",
           why="only the two newest snapshots are kept (older removed, logged)",
           killers=[T + "test_writer_keeps_the_two_newest"]),
    Mutant(id="snapshot-replay-from-applies-the-prefix", file="daemon/node/node.py",
           find="                                                  replay_from=start)",
           replace="                                                  replay_from=0)",
           why="recovery from a snapshot replays only the log after it (state = full replay)",
           killers=[T + "test_restart_from_snapshot_equals_full_replay", "sim:100"]),
]
