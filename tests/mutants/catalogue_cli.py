"""Mutants of the tools' truth (issue 19, build item 6): zwal get and Client.read never pass a
follower's or a damaged node's answer off as a read, and the log tools never take a missing path
for a new, empty log. Each is killed by a real-process test in tests/test_cli_truth.py."""

from tests.mutants.model import Mutant

BC = "daemon/client/core.py"
CC = "daemon/cli/cmd_client.py"
CL = "daemon/cli/cmd_log.py"
T = "tests/test_cli_truth.py::"

MUTANTS = [
    Mutant(id="cli-read-returns-a-follower-answer-as-fresh", file=BC,
           find="            if not r.get(\"stale\"):\n                return self._result(r)\n            answered[",
           replace="            if True:\n                return self._result(r)\n            answered[",
           why="no silent stale answer: without stale=True a read returns only a leader's answer",
           killers=[T + "test_get_with_the_leader_stopped_fails_unless_stale_and_then_says_so"]),
    Mutant(id="cli-pinned-read-of-a-follower-without-stale", file=BC,
           find="        if not stale:\n            raise NoLeader(f\"{node} is a follower",
           replace="        if False:\n            raise NoLeader(f\"{node} is a follower",
           why="a read pinned to a follower is a stale answer too: only with stale=True",
           killers=[T + "test_get_with_the_leader_stopped_fails_unless_stale_and_then_says_so"]),
    Mutant(id="cli-stale-read-from-a-damaged-node", file=BC,
           find="        if why is not None:\n            raise NoLeader(f\"{node}'s answer is not used: {why}\"",
           replace="        if False:\n            raise NoLeader(f\"{node}'s answer is not used: {why}\"",
           why="a node whose recovery cut its log (damaged_end) never answers a stale read",
           killers=[T + "test_a_damaged_node_never_answers_a_stale_read"]),
    Mutant(id="cli-stale-order-keeps-damaged-nodes", file=BC,
           find="        elif (why := damage(st)) is not None:",
           replace="        elif False:",
           why="a damaged node is never a stale-read candidate, however far its log reaches",
           killers=[T + "test_stale_order_skips_damaged_nodes_however_far_they_reach"]),
    Mutant(id="cli-get-no-leader-exit-code", file=CC,
           find="GET_NO_LEADER = 3  #",
           replace="GET_NO_LEADER = 1  #",
           why="the documented exit code (docs/cli.md): 3 when no leader answers, as status --check",
           killers=[T + "test_get_with_the_leader_stopped_fails_unless_stale_and_then_says_so"]),
    Mutant(id="cli-stale-answer-not-said", file=CC,
           find="    if stale:\n        print(f\"zwal: {stale}\", file=sys.stderr)",
           replace="    if False:\n        print(f\"zwal: {stale}\", file=sys.stderr)",
           why="--stale says on stderr which node answered and that the answer is stale",
           killers=[T + "test_get_with_the_leader_stopped_fails_unless_stale_and_then_says_so"]),
    Mutant(id="cli-recover-creates-a-missing-log", file=CL,
           find="_open(args.path, create=False)",
           replace="_open(args.path)",
           why="log recover of a missing path fails and creates nothing (it is not a clean, empty log)",
           killers=[T + "test_log_tools_refuse_a_missing_path_and_create_nothing[recover]"]),
    Mutant(id="cli-write-timeout-hides-unknown-outcome", file=CC,
           find="+ (f\"; the write may or may not have been applied: {check}\" if check else \"\")",
           replace="+ \"\"",
           why="a write with no answer may have been applied: say to check before running it again",
           killers=[T + "test_a_write_without_an_answer_says_its_outcome_is_unknown"]),
    Mutant(id="cli-log-append-creates-silently", file=CL,
           find="    if not existed:  #",
           replace="    if False:  #",
           why="a log tool that creates a missing path says so: a mistyped path is not the log meant",
           killers=[T + "test_log_append_says_when_it_created_the_log"]),
]
