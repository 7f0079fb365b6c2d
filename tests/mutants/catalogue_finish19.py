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
