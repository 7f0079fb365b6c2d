"""Mutants of the pure cores: each a one-line change that breaks a rule of docs/protocol.md or docs/format.md.

Killers are tried in order; the first that fails kills the mutant. `sim:N`
comes first where the simulator drives that code (leader_core, follower
core, epochs, retry, the frame format and the reader's scan): a kill there
shows the simulator guards the rule. The WAL writer and recovery run only in
real processes, so their killers are fast engine tests.

Measured 2026-12-03 (`--every-killer`, sim:300): every mutant is killed.
The simulator kills 11 of the 26 it is tried on: core-commit-ignores-followers,
core-reply-before-fsync, core-ack-without-prefix-check,
core-read-before-start-end-committed, both core-step-down-*, fol-gap-appended
and fol-truncate-to-leader-end-only (both as a timeout), ep-second-vote-in-an-epoch,
retry-conflict-in-window-known, wal-crc-not-checked. The other 15 only a named
fast test kills: its 300 seeds never reach a follower ahead of its leader in
the leader's own epoch, a read joining an already-sent round, a round echoed
across a leader restart, stale or newer-epoch data at a follower, promote
refusals, a conflicting retry in flight, corruption before a valid frame, or
malformed replication and client messages.
"""

from tests.mutants.model import Mutant

LC = "daemon/node/leader_core.py"
FC = "follower/core.py"
EP = "daemon/node/epochs.py"
RT = "daemon/node/retry.py"
FMT = "daemon/wal/format.py"
RD = "daemon/wal/reader.py"
WR = "daemon/wal/writer.py"
RC = "daemon/wal/recovery.py"
WREPL = "daemon/wire/replication.py"
WCLI = "daemon/wire/client.py"
SIM = "sim:300"

MUTANTS = [
    # -- leader core: commit, durability, reads, step-down ----------------------------------
    Mutant(id="core-commit-ignores-followers", file=LC,
           find="return min(self.end, acks[self.k - 1]) if len(acks)",
           replace="return self.end if len(acks)",
           why="commit rule: with K >= 1 a write is answered only after K followers fsynced it",
           killers=[SIM, "tests/test_leader_core.py::test_a_fetch_whose_log_is_a_prefix_acknowledges_and_gets_the_next_chunk"]),
    Mutant(id="core-reply-before-fsync", file=LC,
           find="self.batch_bytes += len(frame)\n        return []",
           replace="self.batch_bytes += len(frame)\n"
                   "        return [self._ok(envelope, req.id, Placed(self.end, self.end + len(frame), self.epoch))]",
           why="no premature success: a write's reply moved before the fsync that covers it (and before K acks)",
           killers=[SIM]),
    Mutant(id="core-ack-without-prefix-check", file=LC,
           find="consistent = offset == 0 or (matched_epoch == fetch.last_epoch and offset <= matched_end)",
           replace="consistent = True",
           why="a fetch acknowledges only if the follower's (last_epoch, end) is a prefix of the leader's log (KIP-279)",
           killers=[SIM, "tests/test_leader_core.py::test_kip_279_a_suffix_from_an_epoch_the_leader_never_had_is_truncated_and_never_acknowledges"]),
    Mutant(id="core-truncates-follower-ahead-in-own-epoch", file=LC,
           find="if fetch.last_epoch == self.epoch and offset > self.end:",
           replace="if False:",
           why="append-only: a follower ahead in the leader's own epoch holds fsynced records the leader lost; never truncate it",
           killers=[SIM, "tests/test_leader_core.py::test_a_follower_ahead_in_the_leaders_own_epoch_is_refused_never_truncated"]),
    Mutant(id="core-read-joins-an-old-round", file=LC,
           find="PendingRead(envelope, req, self.round + 1,",
           replace="PendingRead(envelope, req, self.round,",
           why="ReadIndex: a fresh read needs a confirmation round started after it arrived, or a deposed leader serves stale data",
           killers=[SIM, "tests/test_leader_core.py::test_a_read_waits_for_followers_to_confirm_a_round_started_after_it_arrived"]),
    Mutant(id="core-read-before-start-end-committed", file=LC,
           find="if not self.reads or self.commit < self.start_end or self.confirming is not None:",
           replace="if not self.reads or self.confirming is not None:",
           why="a fresh read is served only from committed state: not before the commit point covers what the leader began with",
           killers=[SIM, "tests/test_leader_core.py::test_reads_are_not_served_before_the_commit_point_covers_what_a_restarted_leader_holds"]),
    Mutant(id="core-round-from-another-incarnation", file=LC,
           find="fetch.inc == self.incarnation and fetch.round > f.round",
           replace="fetch.round > f.round",
           why="ReadIndex: a round echoed to an earlier incarnation of this leader confirms nothing",
           killers=[SIM, "tests/test_leader_core.py::test_rounds_echoed_from_another_leader_incarnation_confirm_nothing"]),
    Mutant(id="core-higher-epoch-fetch-acks", file=LC,
           find="if fetch.epoch > self.epoch:\n            return [CheckPeers(",
           replace="if False:\n            return [CheckPeers(",
           why="a deposed leader never gets a write acknowledged: a fetch of a newer epoch must not count as an ack",
           killers=[SIM, "tests/test_leader_core.py::test_a_higher_epoch_in_a_fetch_is_a_hint_to_ask_the_peers_not_a_step_down"]),
    Mutant(id="core-step-down-says-not-written", file=LC,
           find="out.append(Reply(env, error_reply(rid, code, message, written=True, offset=p.placed.offset)))",
           replace="out.append(Reply(env, error_reply(rid, code, message, written=False, offset=p.placed.offset)))",
           why="stepping down, a durable record's waiters are told it was written (it may commit); 'not written' is a lie",
           killers=[SIM, "tests/test_simulation.py::test_fence_during_batch_tells_the_truth_about_written",
                    "tests/test_core_mutant_killers.py::test_stepping_down_tells_every_waiter_of_a_durable_uncommitted_record_that_it_was_written"]),
    Mutant(id="core-step-down-forgets-waiters", file=LC,
           find="for p in self.pending:\n            for env, rid in p.waiters:\n                out.append(",
           replace="for p in []:\n            for env, rid in p.waiters:\n                out.append(",
           why="stepping down fails every waiting client at once; a waiter of a durable record must not be left hanging",
           killers=[SIM, "tests/test_simulation.py::test_fence_during_batch_tells_the_truth_about_written",
                    "tests/test_core_mutant_killers.py::test_stepping_down_tells_every_waiter_of_a_durable_uncommitted_record_that_it_was_written"]),
    # -- follower core: gaps, truncation, epochs -----------------------------------------------
    Mutant(id="fol-gap-appended", file=FC,
           find="if msg.offset != self.end:",
           replace="if msg.offset < self.end:",
           why="prefix: a chunk above the follower's end leaves a gap; it must be refetched, never appended",
           killers=[SIM, "tests/test_follower_decisions.py::test_duplicate_and_gap_are_refetched"]),
    Mutant(id="fol-truncate-to-leader-end-only", file=FC,
           find="cut = truncation_point(self.history, self.end, msg.last_epoch, msg.offset)",
           replace="cut = msg.offset",
           why="KIP-279: cut to the smaller of the leader's and our own end of the epoch, or a divergent suffix stays",
           killers=[SIM, "tests/test_follower_decisions.py::test_truncation_follows_kip_279_for_an_epoch_the_leader_never_had"]),
    Mutant(id="fol-data-of-newer-epoch-without-adopting", file=FC,
           find="if epoch > self.epoch:\n            self.round = 0",
           replace="if False:\n            self.round = 0",
           why="a follower persists a newer epoch before taking its leader's data (else the old leader can still get acks)",
           killers=[SIM, "tests/test_follower_decisions.py::test_leader_epochs"]),
    Mutant(id="fol-stale-leader-accepted", file=FC,
           find="if epoch < self.epoch:\n            # A stale leader.",
           replace="if False:\n            # A stale leader.",
           why="a deposed leader never gets a write acknowledged: a follower takes no data from an older epoch",
           killers=[SIM, "tests/test_follower_decisions.py::test_leader_epochs"]),
    Mutant(id="fol-frame-epoch-below-last", file=FC,
           find="if frame.epoch < last or frame.epoch > leader_epoch:",
           replace="if frame.epoch > leader_epoch:",
           why="epochs never go backwards in a log: a frame older than the follower's last epoch is refused",
           killers=[SIM, "tests/test_follower_decisions.py::test_frame_epochs_outside_the_allowed_range_are_refused"]),
    # -- epoch rules --------------------------------------------------------------------------
    Mutant(id="ep-second-vote-in-an-epoch", file=EP,
           find="if cur.voted_for is not None or cur.role == LEADER:",
           replace="if cur.role == LEADER:",
           why="one vote per epoch: two candidates of one epoch must not both gather a majority",
           killers=[SIM, "tests/test_epoch_rules.py::test_a_fence_is_a_vote_and_a_node_votes_once_per_epoch"]),
    Mutant(id="ep-promote-without-own-vote", file=EP,
           find="if epoch != cur.epoch or cur.voted_for != me or cur.leader is not None:",
           replace="if epoch != cur.epoch or cur.leader is not None:",
           why="a node leads epoch E only if it voted for itself in E",
           killers=[SIM, "tests/test_epoch_rules.py::test_promote_needs_the_nodes_own_vote_in_that_epoch"]),
    Mutant(id="ep-promote-after-log-shrank", file=EP,
           find="if end < checked:",
           replace="if end < 0:",
           why="promote refuses a node whose log shrank below what the promotion checked (it lost records since)",
           killers=[SIM, "tests/test_epoch_rules.py::test_promote_is_refused_when_the_log_shrank_below_what_the_promotion_checked"]),
    Mutant(id="ep-may-follow-an-older-epoch", file=EP,
           find="    if epoch < cur.epoch:\n        return False\n    return not",
           replace="    if epoch < cur.epoch - 1:\n        return False\n    return not",
           why="a node's epoch never goes down: it never follows the leader of an older epoch",
           killers=[SIM, "tests/test_epoch_rules.py::test_a_node_that_voted_for_a_loser_still_follows_the_winner_and_keeps_its_vote"]),
    # -- retries ------------------------------------------------------------------------------
    Mutant(id="retry-conflict-in-flight-joins", file=RT,
           find="if entry.digest != digest:\n                    return Conflict(",
           replace="if False:\n                    return Conflict(",
           why="a reused (cid, id) with other content is refused, never answered with the original's success",
           killers=[SIM, "tests/test_leader_core.py::test_a_retry_with_other_content_while_the_original_is_in_the_batch_is_refused"]),
    Mutant(id="retry-conflict-in-window-known", file=RT,
           find="if seen.digest != digest:\n            return Conflict(seen.placed)",
           replace="if False:\n            return Conflict(seen.placed)",
           why="a reused (cid, id) with other content is refused, never answered as a retry of a committed record",
           killers=[SIM, "tests/test_leader_core.py::test_a_retry_with_other_content_gets_bad_request_and_changes_nothing"]),
    # -- the log: format, reader, writer, recovery ----------------------------------------------
    Mutant(id="wal-crc-not-checked", file=FMT,
           find="if zlib.crc32(buf[pos + 4 : end]) != crc:",
           replace="if False:",
           why="damaged bytes on disk (or from the network) are never trusted: every frame's CRC is checked",
           killers=[SIM, "tests/test_engine_format.py::test_flipped_bytes_are_detected_never_misread"]),
    Mutant(id="wal-corrupt-middle-called-torn", file=RD,
           find='return CORRUPT, f"bad frame ({status}) followed by a valid frame',
           replace='return TORN, f"bad frame ({status}) followed by a valid frame',
           why="only a tail that cannot hide a later record is torn; damage before a valid frame is corruption, never cut",
           killers=[SIM, "tests/test_engine_format.py::test_garbage_followed_by_a_valid_frame_stays_corrupt"]),
    Mutant(id="wal-short-write-taken-as-whole", file=WR,
           find="        view = view[n:]",
           replace="        view = view[len(view):]",
           why="write_full loops over short writes: a short write must not be reported as the whole frame",
           killers=["tests/test_engine_writer.py::test_short_writes_and_eintr_give_identical_bytes"]),
    Mutant(id="wal-durable-before-fsync", file=WR,
           find="        self._sync()\n        self.end = start + len(data)",
           replace="        self.end = start + len(data)",
           why="no premature success: append_frames reports bytes durable only after the fdatasync that covers them",
           killers=["tests/test_engine_writer.py::test_one_fsync_per_append_and_per_batch"]),
    Mutant(id="wal-append-after-fsync-failure", file=WR,
           find="if self.poisoned:\n            raise WalPoisoned(f\"{self.path}: log refuses writes",
           replace="if False:\n            raise WalPoisoned(f\"{self.path}: log refuses writes",
           why="a failed fsync ends trust: the writer appends nothing more (fsyncgate)",
           killers=["tests/test_engine_writer.py::test_fsync_failure_poisons_the_writer"]),
    Mutant(id="wal-recovery-opens-corrupt-log", file=RC,
           find="if result.status == CORRUPT:\n                raise LogCorrupt(path, result)",
           replace="if False:\n                raise LogCorrupt(path, result)",
           why="a log damaged before its end is refused and left untouched, never appended to",
           killers=["tests/test_engine_recovery.py::test_corruption_is_refused_and_the_file_left_untouched"]),
    Mutant(id="wal-torn-tail-cut-without-saving", file=RC,
           find="save_copy(rfd, result.valid_end, result.file_size, saved)",
           replace="pass",
           why="recovery never destroys evidence: a torn tail is saved aside before it is cut",
           killers=["tests/test_engine_recovery.py::test_cut_anywhere_inside_the_last_record_recovers_to_the_previous_boundary"]),
    # -- wire validation: bad input changes nothing ---------------------------------------------
    Mutant(id="wire-negative-uint-accepted", file=WREPL,
           find="if type(v) is not int or not 0 <= v <= MAX_UINT:\n        raise BadMessage(",
           replace="if type(v) is not int:\n        raise BadMessage(",
           why="bad input changes nothing: a replication field outside 0..2**63-1 is a BadMessage",
           killers=[SIM, "tests/test_cluster_identity.py",
                    "tests/test_core_mutant_killers.py::test_a_fetch_field_outside_the_unsigned_range_is_a_bad_message"]),
    Mutant(id="wire-heartbeat-with-data-accepted", file=WREPL,
           find="if (offset is None) != (len(frames) == 1):",
           replace="if offset is None and len(frames) == 2:",
           why="bad input changes nothing: a chunk without its data frame is a BadMessage, not an empty chunk",
           killers=[SIM, "tests/test_follower_decisions.py::test_heartbeat_redirect_and_garbage",
                    "tests/test_core_mutant_killers.py::test_a_chunk_header_without_its_data_frame_is_a_bad_message_not_a_crash"]),
    Mutant(id="wire-request-epoch-unchecked", file=WCLI,
           find='if type(epoch) is not int or not 0 <= epoch < 2**63:\n            _uint(m, "epoch")',
           replace='if False:\n            _uint(m, "epoch")',
           why="bad input gets a clear error and the daemon stays up: a request's epoch that is not an unsigned "
               "integer is a bad request (the leader compares it with its own)",
           killers=[SIM, "tests/test_core_mutant_killers.py::test_a_request_epoch_that_is_not_an_unsigned_integer_is_a_bad_request"]),
]
