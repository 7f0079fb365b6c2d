from tests.mutants.model import Mutant

MUTANTS = [
    Mutant(id="watch-stream-uncommitted", file="daemon/node/watch.py",
           find="            return [ServeWatch(envelope, rid, w.offset, commit, w.max_bytes)]",
           replace="            return [ServeWatch(envelope, rid, w.offset, end, w.max_bytes)]",
           why="a watch streams only committed records (the commit point, not the log's end)",
           killers=["tests/test_watch_core.py::test_below_the_commit_point_is_served_at_once_and_never_past_it"]),
    Mutant(id="watch-from-off-by-one", file="daemon/node/watch.py",
           find="            if p.watch.offset < commit:",
           replace="            if p.watch.offset <= commit:",
           why="a parked watch is served only once the commit point passes its offset (no empty or uncommitted read)",
           killers=["tests/test_watch_core.py::test_nothing_committed_past_from_parks_until_commit_or_the_wait"]),
    Mutant(id="watch-no-permission-check", file="daemon/auth/policy.py",
           find='NODE_CLIENT_OPS = frozenset({"status", "ping"})',
           replace='NODE_CLIENT_OPS = frozenset({"status", "ping", "watch"})',
           why="a key whose role may not read (a node key) gets forbidden for watch, as for get",
           killers=["tests/test_watch_cluster.py::test_follower_redirects_forbidden_key_refused_and_tail_follow_prints_lines"]),
    Mutant(id="watch-unbounded-parked", file="daemon/node/watch.py",
           find="        if held + w.max_bytes > self.budget or len(self.parked) >= self.max_parked:",
           replace="        if False:",
           why="a slow watcher is bounded in bytes: parked watches count against its connection's budget",
           killers=["tests/test_watch_core.py::test_parked_watches_are_bounded_per_connection_in_bytes"]),
]
