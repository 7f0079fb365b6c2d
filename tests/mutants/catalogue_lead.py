from tests.mutants.model import Mutant

MUTANTS = [
    Mutant(id="lead-repair-in-flight-reset", file="daemon/node/leader_core.py",
           find="        if self.repair_frames is not None:\n            pass  # a repair is on its way to disk",
           replace="        if False:\n            pass  # a repair is on its way to disk",
           why="a follower's fetch while a repair is on its way to disk must not forget the repair",
           killers=["tests/test_leader_repair.py::"
                    "test_a_fetch_that_arrives_while_the_repair_is_on_its_way_to_disk_changes_nothing",
                    "tests/test_simulation.py::test_a_damaged_leader_tail_with_a_follower_gone_heals"]),
    Mutant(id="lead-unclean-restart-trusted", file="daemon/node/identity.py",
           find="        if self.role != LEADER or ack_replicas < 1 or clean_end == end:",
           replace="        if True:",
           why="a leader that crashed must confirm its log with its followers (a disk may lie)",
           killers=["tests/test_unclean_restart.py::test_a_crashed_leader_confirms_and_a_clean_stop_at_the_same_end_does_not",
                    "tests/test_simulation.py::test_a_lying_leader_disk_loses_no_acknowledged_write",
                    "tests/test_simulation.py::test_a_lying_leader_disk_heals_by_itself"]),
    Mutant(id="lead-clean-stop-any-end", file="daemon/node/identity.py",
           find="        if self.role != LEADER or ack_replicas < 1 or clean_end == end:",
           replace="        if self.role != LEADER or ack_replicas < 1 or clean_end is not None:",
           why="a clean stop is trusted only at exactly the end it recorded",
           killers=["tests/test_unclean_restart.py::test_a_clean_stop_is_trusted_only_at_its_own_end"]),
    Mutant(id="lead-switchover-leader-not-counted", file="daemon/failover/promote.py",
           find='if s["role"] in ("follower", "leader")}',
           replace='if s["role"] == "follower"}',
           why="a live leader that the candidate covers is a copy (a switchover with a follower gone)",
           killers=["tests/test_promote_rules.py::"
                    "test_a_switchover_with_a_follower_gone_counts_the_live_leader_as_a_copy"]),
    Mutant(id="lead-admin-while-changing-role", file="daemon/node/answers.py",
           find="    if pending is not None:", replace="    if False:",
           why="a role that has already ended must not vote: the next role starts from the state its "
               "transition carries, which forgets the vote (seed 500609: two leaders of one epoch)",
           killers=["tests/test_simulation.py::test_seeds_that_found_bugs[500609-False]"]),
    Mutant(id="lead-vote-may-change", file="daemon/node/identity.py",
           find="    if new.epoch == old.epoch and old.voted_for is not None and new.voted_for != old.voted_for:",
           replace="    if False:",
           why="within one epoch a vote once given never changes",
           killers=["tests/test_node_state.py::test_a_vote_once_given_never_changes_within_its_epoch"]),
]
