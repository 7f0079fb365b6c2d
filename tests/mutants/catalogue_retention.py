from tests.mutants.model import Mutant

K = "tests/test_retention_plan.py::"
MUTANTS = [
    Mutant(id="retention-active-segment", file="daemon/wal/retention.py",
           find="        if not seg.sealed:", replace="        if False:",
           why="the segment still being written must never be deleted",
           killers=[K + "test_the_active_segment_never_goes_even_below_a_snapshot"]),
    Mutant(id="retention-snapshot-off-by-one", file="daemon/wal/retention.py",
           find="        elif seg.end > snapshot_offset:", replace="        elif seg.end > snapshot_offset + 1:",
           why="only segments wholly below the newest snapshot may go",
           killers=[K + "test_only_sealed_segments_wholly_below_the_snapshot_go"]),
    Mutant(id="retention-ignores-lagging-follower", file="daemon/wal/retention.py",
           find="        elif acked_floor is not None and seg.end > acked_floor:",
           replace="        elif False:",
           why="a segment an in-sync follower has not acknowledged must stay",
           killers=[K + "test_a_lagging_follower_and_a_running_transfer_hold_segments"]),
    Mutant(id="retention-ignores-transfer", file="daemon/wal/retention.py",
           find="        elif transfer_floor is not None and seg.end > transfer_floor:",
           replace="        elif False:",
           why="a running snapshot transfer keeps the segments after its snapshot (etcd #4055)",
           killers=[K + "test_a_lagging_follower_and_a_running_transfer_hold_segments"]),
    Mutant(id="retention-bytes-off-by-one", file="daemon/wal/retention.py",
           find="        elif total - seg.size < retain_bytes:", replace="        elif total - seg.size < retain_bytes - 1:",
           why="retain_bytes keeps at least that much log",
           killers=[K + "test_retain_bytes_keeps_at_least_that_much_log"]),
    Mutant(id="retention-keep-all-ignored", file="daemon/wal/retention.py",
           find="    if retain_bytes == KEEP_ALL:", replace="    if retain_bytes == -2:",
           why="retain_bytes = -1 keeps everything",
           killers=[K + "test_no_snapshot_or_keep_all_deletes_nothing"]),
]

R = "tests/test_segment_retire.py::"
MUTANTS += [
    Mutant(id="retention-note-after-files", file="daemon/wal/segments.py",
           find="        if not self._write_oldest_or_skip(upto):\n            return []\n        keep = ",
           replace="        keep = ",
           why="the oldest retained offset moves first, durably; the files go after (KAFKA-16073)",
           killers=[R + "test_the_oldest_is_durable_before_any_file_goes"]),
    Mutant(id="retention-recovery-leaves-deleted", file="daemon/wal/segments.py",
           find="        finish_retirement(log_dir)\n", replace="",
           why="recovery finishes a retention pass a crash interrupted",
           killers=[R + "test_recovery_finishes_a_pass_a_crash_interrupted"]),
]

N = "tests/test_retention_node.py::"
MUTANTS += [
    Mutant(id="retention-newest-snapshot-bounds", file="daemon/node/retaining.py",
           find="snapshot_offset=min(kept) if kept else None", replace="snapshot_offset=max(kept) if kept else None",
           why="retention is bounded by the older kept snapshot, so a broken newest one still leaves a local recovery",
           killers=[N + "test_sealed_segments_below_the_older_snapshot_go_and_the_cluster_still_serves_everything",
                    "sim:200"]),
    Mutant(id="retention-leader-ignores-followers", file="daemon/node/leader_core.py",
           find="        acks = [f.acked for f in self.followers.values()]\n        return min(acks) if acks else None",
           replace="        return None",
           why="a leader keeps every segment a follower has not acknowledged",
           killers=[N + "test_a_follower_that_was_away_still_finds_what_it_needs"]),
    Mutant(id="retention-while-busy", file="daemon/node/retaining.py",
           find="        if now < self._next or log.busy:", replace="        if now < self._next:",
           why="no retention pass while a batch is on its way to disk (the syncer may be rolling the log)",
           killers=["sim:200"]),
]

# A file system that refuses to delete (tests/test_retention_faults.py, strace -e inject).
_RF = "tests/test_retention_faults.py::test_a_refused_delete_leaves_the_node_serving_and_is_finished_at_restart"
MUTANTS += [
    Mutant(id="retention-refused-delete-stops-the-node", file="daemon/wal/segments.py",
           find="    def refused(e: OSError) -> bool:\n        logs.warn(",
           replace="    def refused(e: OSError) -> bool:\n        raise e\n        logs.warn(",
           why="a retired segment is below the durable oldest offset: a refused rename or unlink costs disk, "
               "not the node (it stopped with internal_error before)",
           killers=[_RF + "[unlink]", _RF + "[rename]"]),
    Mutant(id="retention-refused-delete-never-retried", file="daemon/wal/segments.py",
           find="        for path, base, size in self._undeleted:\n",
           replace="        for path, base, size in []:\n",
           why="a segment whose delete was refused is tried again at the next retention pass",
           killers=[_RF + "[unlink]"]),
    Mutant(id="retention-failed-dir-fsync-keeps-trust", file="daemon/wal/segments.py",
           find="            on_fsync_failure(e)\n            return False",
           replace="            return False",
           why="a failed directory fsync after a retired segment's rename ends trust: the log refuses writes",
           killers=["tests/test_retire_refusals.py::test_a_failed_directory_fsync_in_retire_ends_trust"]),
    Mutant(id="retention-tools-count-a-refused-segment", file="daemon/wal/segments.py",
           find="    live = [(b, p) for b, p in found if b >= oldest]",
           replace="    live = list(found)",
           why="a segment below oldest.json whose delete was refused is no part of the log: verify and restart skip it",
           killers=["tests/test_retire_refusals.py::test_verify_of_a_running_nodes_data_dir_is_clean_after_a_refused_rename",
                    "tests/test_retire_refusals.py::test_a_restart_while_the_file_system_still_refuses_starts"]),
]
MUTANTS += [
    Mutant(id="snapshot-failed-rename-taken-for-written", file="daemon/node/snapshotting.py",
           find="        if w.error is not None:\n            self._retry_at = now + RETRY_AFTER_FAILURE",
           replace="        if False:\n            self._retry_at = now + RETRY_AFTER_FAILURE",
           why="a snapshot whose rename failed is no snapshot: it is reported failed, never counted as the newest",
           killers=["tests/test_retention_faults.py::"
                    "test_a_refused_snapshot_rename_answers_an_error_names_no_snapshot_and_loses_nothing"]),
]

# From the second review of the refusal handling (tests/test_retire_refusals.py, tests/test_retention_faults.py).
_RR = "tests/test_retire_refusals.py::"
MUTANTS += [
    Mutant(id="retention-live-segments-hides-a-gap", file="daemon/wal/segments.py",
           find="    if not live or live[0][0] != oldest:", replace="    if False:",
           why="a log whose segment at the oldest offset is missing has a gap: the tools say so, never 'clean'",
           killers=[_RR + "test_verify_sees_a_missing_segment_at_the_oldest_offset"]),
    Mutant(id="retention-old-writer-changes-an-installed-log", file="daemon/wal/segments.py",
           find="        if not same_dir:\n", replace="        if False:\n",
           why="a log's retire never writes into a log/ a snapshot install swapped in",
           killers=[_RR + "test_a_retire_by_the_writer_of_a_log_an_install_replaced_changes_nothing"]),
    Mutant(id="retention-refused-oldest-note-stops-the-node", file="daemon/wal/segments.py",
           find="        except OSError as e:\n            logs.warn(\"retention_pass_skipped\", path=self.dir, oldest=upto,",
           replace="        except ZeroDivisionError as e:\n            logs.warn(\"retention_pass_skipped\", path=self.dir, oldest=upto,",
           why="a refused rename of oldest.json.tmp skips the pass (nothing deleted) and the node serves on",
           killers=["tests/test_retention_faults.py::"
                    "test_a_refused_rename_of_the_oldest_note_skips_the_pass_and_the_node_serves_on"]),
    Mutant(id="retention-oldest-fsync-failure-keeps-trust", file="daemon/wal/segments.py",
           find="        except SyncError as e:\n            self._roll_poison = str(e)",
           replace="        except ZeroDivisionError as e:\n            self._roll_poison = str(e)",
           why="a failed fsync of oldest.json ends trust: the log refuses writes",
           killers=[_RR + "test_a_failed_fsync_of_the_oldest_note_ends_trust_and_deletes_nothing"]),
]
MUTANTS += [
    Mutant(id="retention-oldest-fsync-failure-is-an-internal-error", file="daemon/node/zmq_ports.py",
           find="        except WalFsyncError as e:  # a failed fsync of oldest.json",
           replace="        except ZeroDivisionError as e:  # a failed fsync of oldest.json",
           why="a failed fsync in a retention pass stops the node as a failed fsync (exit 3, restarted, recovered), "
               "not as an internal error (exit 2, never restarted)",
           killers=["tests/test_retire_refusals.py::"
                    "test_a_failed_fsync_of_the_oldest_note_stops_the_node_as_a_failed_fsync"]),
]
