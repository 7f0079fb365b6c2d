from tests.mutants.model import Mutant

SIM = "tests/test_simulation.py::"

MUTANTS = [
    Mutant(id="finish19-no-retry-after-split-vote", file="daemon/failover/promote.py",
           find="        retried, min_epoch = retried + 1, plan.epoch",
           replace="        return res",
           why="a split vote between two promotes must resolve itself: the loser retries once at a higher "
               "epoch (the simulator runs this loop, promote.retrying)",
           killers=[SIM + "test_two_promotes_at_once_resolve_the_split_vote"]),
    Mutant(id="finish19-zero-retries-after-lost-vote", file="daemon/failover/promote.py",
           find="RETRIES_AFTER_LOST_VOTE = 1\n",
           replace="RETRIES_AFTER_LOST_VOTE = 0\n",
           why="the default promote retries once after a lost vote",
           killers=[SIM + "test_two_promotes_at_once_resolve_the_split_vote"]),
]
MUTANTS.append(
    Mutant(id="finish19-no-vote-sent-back", file="daemon/failover/promote.py",
           find="                   if down or not no_vote else",
           replace="                   if True else",
           why="no message tells an operator to run a command the tool would refuse: a node that is up but "
               "refused the vote is not to be 'brought back'; only --force promotes then",
           killers=["tests/test_promote_rules.py::"
                    "test_a_node_that_refused_the_vote_is_not_sent_back_and_the_force_command_is_named",
                    "tests/test_simulation.py::"
                    "test_no_provable_copy_left_is_a_needs_force_run_and_the_refusal_names_the_command"]))
