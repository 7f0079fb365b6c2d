"""Mutants of the batch op (issue 22; docs/protocol.md, "batch"): checked whole before anything is written, each
write its own record under its own retry id, one reply."""

from tests.mutants.model import Mutant

LEADER = "daemon/node/leader.py"
WIRE = "daemon/wire/client.py"
T = "tests/test_batch.py::"

MUTANTS = [
    Mutant(id="batch-not-checked-first", file=LEADER,
           find="                recs.append(validate_write(w))",
           replace="                recs.append(None)",
           why="bad input changes nothing: one bad write refuses its batch before any of it is written",
           killers=[T + "test_bad_input_in_a_batch_changes_nothing"]),
    Mutant(id="batch-duplicate-ids-taken", file=WIRE,
           find="        if wid in seen:",
           replace="        if False:",
           why="two writes of one batch with one request id would share a retry-window entry",
           killers=[T + "test_bad_input_in_a_batch_changes_nothing"]),
    Mutant(id="batch-reply-before-every-write", file=LEADER,
           find="        if len(b.results) == len(b.ids):",
           replace="        if len(b.results) >= 1:",
           why="the batch is answered once every write has its own answer (no premature success)",
           killers=[T + "test_set_many_writes_each_record_once_in_order_and_every_copy_holds_them"]),
]
