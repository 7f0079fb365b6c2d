"""Mutants of the segmented log (issue 20, item 1, daemon/wal/segments.py): rolling only between
batches with the new file and directory fsynced first, contiguity and sealed-segment checks at
recovery, reads that cross segment ends, truncation across segments, and the migration of wal.log.
Each is killed by a real-file test in tests/test_segments.py (or the simulator)."""

from tests.mutants.model import Mutant

S = "daemon/wal/segments.py"
T = "tests/test_segments.py::"

MUTANTS = [
    Mutant(id="segments-no-dir-fsync-on-roll", file=S,
           find="            self._fsync(fd)\n            os.fsync(self._dir_fd)\n",
           replace="            self._fsync(fd)\n",
           why="a new segment's directory entry is durable before anything in it is acknowledged",
           killers=[T + "test_a_roll_fsyncs_the_new_file_and_the_directory_before_writing_to_it"]),
    Mutant(id="segments-roll-mid-batch", file=S,
           find="    return end > segment_base and end - segment_base >= segment_bytes\n",
           replace="    return end > segment_base and end - segment_base >= segment_bytes - 200\n",
           why="a segment rolls at segment_bytes, not before (stand-in for a roll decided inside a batch: "
               "the limit moves)",
           killers=[T + "test_plan_roll_is_decided_between_batches",
                    T + "test_a_segment_rolls_at_the_limit_on_a_batch_boundary"]),
    Mutant(id="segments-skip-contiguity-check", file=S,
           find="        check_contiguous(sealed + [(last_base, last_path, 0)])\n",
           replace="",
           why="a gap or an overlap between segment files is refused, naming the files",
           killers=[T + "test_segments_that_are_not_contiguous_are_refused"]),
    Mutant(id="segments-read-chunk-empty-at-boundary", file=S,
           find="    return min(end, bases[i + 1]) if i + 1 < len(bases) else end\n",
           replace="    return min(end, bases[i + 1] - 1) if i + 1 < len(bases) else end\n",
           why="a chunk below the end is never empty: it may stop at a segment end, a frame boundary",
           killers=[T + "test_reads_cross_segment_boundaries"]),
    Mutant(id="segments-sealed-torn-tail-cut", file=S,
           find="            if part.status != CLEAN:\n                raise SealedSegmentDamaged(p, b, part)\n",
           replace="            if part.status == CORRUPT:\n                raise SealedSegmentDamaged(p, b, part)\n",
           why="only the last segment may have a torn tail; bad bytes at a sealed segment's end are damage",
           killers=[T + "test_damage_in_a_sealed_segment_is_refused_and_nothing_changes"]),
    Mutant(id="segments-replay-from-ignored", file="daemon/wal/reader.py",
           find="        if pos < replay_from:\n", replace="        if False:\n",
           why="frames below replay_from (a snapshot's offset) are not replayed again",
           killers=[T + "test_replay_from_skips_the_segments_below_it"]),
    Mutant(id="segments-frames-keep-file-offsets", file=S,
           find="                    on_frame(f if base == 0 else dataclasses.replace(f, offset=g), r)\n",
           replace="                    on_frame(f, r)\n",
           why="offsets stay global: replay sees each record at its log offset, not its offset in the file",
           killers=[T + "test_recovery_replays_every_segment_with_global_offsets"]),
    Mutant(id="segments-truncate-keeps-later-segments", file=S,
           find="        for s in reversed(segs[keep + 1:]):\n            os.unlink(s.path)\n",
           replace="        for s in reversed(segs[keep + 2:]):\n            os.unlink(s.path)\n",
           why="truncate_suffix removes every later segment (a kept one would come back at recovery)",
           killers=[T + "test_truncate_suffix_across_segments"]),
    Mutant(id="segments-migrate-log-before-note", file=S,
           find="    if os.path.exists(note):\n        hook(\"move_note\")\n",
           replace="    if os.path.exists(note) and not os.path.exists(legacy):\n        hook(\"move_note\")\n",
           why="the note of a failed fsync moves with wal.log, before it: never left behind a log it must cut",
           killers=[T + "test_migration_survives_a_crash_at_every_step",
                    T + "test_migration_survives_kill_9_at_every_step"]),
    Mutant(id="segments-no-dir-lock", file=S,
           find="        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    except BlockingIOError:\n        os.close(fd)\n",
           replace="        pass\n    except BlockingIOError:\n        os.close(fd)\n",
           why="one writer per log directory, whichever segment is last",
           killers=[T + "test_two_processes_cannot_open_one_segmented_log"]),
]
