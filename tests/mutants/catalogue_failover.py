"""Mutants of automatic failover through etcd (issue 21; docs/failover.md): the lease bound, self-fencing, the
election's rules and the one epoch space. Killed by tests against a real 3-member etcd and by the pure rules'
tests."""

from tests.mutants.model import Mutant

LEASE = "daemon/failover/lease.py"
LEADER = "daemon/node/leader.py"
EF = "tests/test_etcd_failover.py::"
LR = "tests/test_lease_rules.py::"

MUTANTS = [
    Mutant(id="failover-lease-outlives-its-ttl", file=LEASE,
           find="        self.deadline = max(self.deadline, sent_at + ttl - margin(ttl))",
           replace="        self.deadline = max(self.deadline, sent_at + ttl + 2)",
           why="the leader's lease ends before etcd's can: send time + granted TTL - margin",
           killers=[EF + "test_etcd_lost_the_leader_stops_acknowledging_within_the_lease",
                    LR + "test_the_deadline_counts_from_the_send_time_less_the_margin_and_never_moves_back"]),
    Mutant(id="failover-ack-decided-past-the-lease", file=LEADER,
           find="                    if act.acked is not None and not self._lease_holds():",
           replace="                    if False:",
           why="no write ok decided at or after the lease's deadline (a batch that lands late is not acknowledged)",
           killers=[EF + "test_a_batch_that_lands_after_the_lease_ran_out_is_not_acknowledged"]),
    Mutant(id="failover-leader-never-self-fences", file=LEADER,
           find="        if coord.lease.held and not coord.lease.valid(now):",
           replace="        if False:",
           why="Patroni's rule: a leader that cannot prove its lease steps down",
           killers=[EF + "test_etcd_lost_the_leader_stops_acknowledging_within_the_lease"]),
    Mutant(id="failover-election-ignores-the-copies", file=LEASE,
           find="        pick = promotable(statuses, ack_replicas, deposed_leaders(statuses))",
           replace="        pick = most_advanced(statuses)",
           why="only a follower that F - K + 1 copies vouch for stands (no damaged node counts as a copy)",
           killers=[LR + "test_a_damaged_node_is_no_copy_and_a_minority_never_elects"]),
    Mutant(id="failover-election-by-a-minority", file=LEASE,
           find="    if len(reachable) < len(statuses) // 2 + 1:",
           replace="    if False:",
           why="an election needs a majority of the nodes to answer",
           killers=[LR + "test_a_damaged_node_is_no_copy_and_a_minority_never_elects"]),
    Mutant(id="failover-k0-elects-without-allow-data-loss", file=LEASE,
           find="        if not allow_data_loss:\n            return Wait(",
           replace="        if False:\n            return Wait(",
           why="with ack_replicas = 0 automatic failover is off unless allow_data_loss = true",
           killers=[LR + "test_ack_replicas_0_elects_only_when_data_loss_is_allowed"]),
    Mutant(id="failover-votes-by-hand-in-etcd-mode", file="daemon/node/answers.py",
           find="    if host.coord.enabled and req.op in (epochs.FENCE, epochs.PROMOTE):",
           replace="    if False:",
           why="one epoch space: in etcd mode no node votes or leads by an admin op",
           killers=[EF + "test_promote_by_hand_is_refused_in_etcd_mode_and_changes_nothing"]),
]
