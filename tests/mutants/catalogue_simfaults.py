"""Mutants that only the simulator's issue 19 faults (tests/sim/faults.py) catch."""

from tests.mutants.model import Mutant

MUTANTS = [
    Mutant(id="simfaults-truncate-followers-ahead-of-a-lying-leader", file="daemon/node/leader_core.py",
           find="if fetch.last_epoch == self.epoch and offset > self.end:",
           replace="if fetch.last_epoch == self.epoch and offset > self.end and self.confirming is not None:",
           why="contract 2 and 3: a leader whose disk lost fsynced records (clean log, no recovery cut, so "
               "no confirm_from) would truncate the followers that hold them: acknowledged records lost. "
               "Only a lying disk makes a leader's log end below its followers in its own epoch",
           killers=["tests/test_simulation.py::test_a_lying_leader_disk_heals_by_itself"]),
]
