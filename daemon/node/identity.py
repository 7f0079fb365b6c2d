"""A node's durable identity: role, epoch, whom it follows, epoch history.

Replaced atomically (write temp, fsync, rename, fsync directory), so a crash
leaves either the old or the new state, never a mix. A restart never changes
a node's role by itself: only `zwal promote` (or learning of a newer epoch)
does, and it writes this file before acting on the change.
"""

from __future__ import annotations

import json
import os
import dataclasses
from dataclasses import dataclass, field

from daemon.wal.reader import ScanResult
from daemon.wal.writer import fsync_dir, replace_json_durably, write_full

LEADER = "leader"
FOLLOWER = "follower"
STATE_VERSION = 1


class StateError(Exception):
    pass


@dataclass
class NodeState:
    role: str
    epoch: int
    leader: str | None
    # (epoch, offset where that epoch's records begin), ascending: the
    # leader-epoch checkpoint a rejoining node's divergence is computed from.
    history: list[tuple[int, int]] = field(default_factory=list)
    # The newest epoch this node led. Writes acknowledged in an epoch sit on
    # K followers of it, so a former leader's tail in the epoch it led never
    # sets the bar for "most advanced" at the next promotion.
    led_epoch: int = 0
    # The one node this node accepts as leader of `epoch` (Raft's votedFor):
    # set by a fence for a candidate, by following a leader, or by leading.
    # Two promotions of one epoch cannot both win a majority of these votes.
    voted_for: str | None = None
    # Set when this node, as leader, restarted and recovery cut bytes from
    # its log at this offset: records it may have acknowledged could be gone
    # here but held by followers. Until F - K + 1 followers show they hold
    # nothing beyond its end, it takes no writes and truncates no follower
    # (Protocol-Aware Recovery: the replicas repair the leader, never the
    # other way round). Cleared once confirmed, or when it stops leading.
    confirm_from: int | None = None
    # Set when recovery cut bytes from the log: the log's end before the
    # cut. Those bytes may have been a record that was fsynced, acknowledged
    # and then damaged (a flipped length field even makes such a record look
    # unfinished, so no cut can be told harmless). Until this node's log
    # reaches that end again by replication it may miss acknowledged
    # records, so promotion does not count it as a copy (docs/protocol.md).
    damaged_end: int | None = None
    # Set when this node started with no node-state.json, an empty log and no
    # first-start marker (daemon/node/bootstrap.py): it was rebuilt, so it
    # may have voted in epochs it no longer knows. It casts no vote and
    # follows only the leader its peers report; following clears it.
    joining: bool = False
    # Set when this node, as leader, resumed writing after confirming a log
    # its recovery had cut: the end it resumed at, and the followers that had
    # not answered then. Such a follower may hold old, unacknowledged bytes
    # of this epoch beyond `resume_at`; its first fetch beyond it is told to
    # truncate there (daemon/node/leader_core.py). Cleared as each is heard.
    resume_at: int | None = None
    unheard: list[str] = field(default_factory=list)

    def follower_of(self, epoch: int, leader: str | None, voted_for: str | None = None) -> "NodeState":
        """This node as a follower at `epoch`, keeping its history and led_epoch.

        In the same epoch the vote is kept; a new epoch starts with the vote
        given (the leader followed, or the candidate a fence was for).
        """
        vote = voted_for or leader
        if epoch == self.epoch and self.voted_for is not None:
            vote = self.voted_for
        return NodeState(FOLLOWER, epoch, leader, list(self.history), self.led_epoch, vote,
                         damaged_end=self.damaged_end)

    def with_(self, **changes: object) -> "NodeState":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **{"history": list(self.history), "unheard": list(self.unheard),
                                            **changes})  # type: ignore[arg-type]

    def to_json(self) -> bytes:
        return json.dumps(
            {"version": STATE_VERSION, "role": self.role, "epoch": self.epoch, "leader": self.leader,
             "history": [list(h) for h in self.history], "led_epoch": self.led_epoch,
             "voted_for": self.voted_for, "confirm_from": self.confirm_from, "damaged_end": self.damaged_end,
             **({"joining": True} if self.joining else {}),
             **({"resume_at": self.resume_at, "unheard": list(self.unheard)} if self.resume_at is not None else {})},
            indent=1,
        ).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, path: str) -> "NodeState":
        try:
            m = json.loads(data)
            if m.get("version") != STATE_VERSION:
                raise StateError(f"{path}: unknown state version {m.get('version')!r}")
            role, epoch, leader = m["role"], m["epoch"], m.get("leader")
            if role not in (LEADER, FOLLOWER) or not isinstance(epoch, int) or epoch < 0:
                raise StateError(f"{path}: invalid role or epoch")
            history = [(int(e), int(o)) for e, o in m.get("history", [])]
            led_epoch = int(m.get("led_epoch", 0))
            voted_for = m.get("voted_for")
            confirm_from = m.get("confirm_from")
            damaged_end = m.get("damaged_end")
            for v in (confirm_from, damaged_end):
                if v is not None and (not isinstance(v, int) or v < 0):
                    raise StateError(f"{path}: invalid confirm_from or damaged_end")
            if voted_for is not None and not isinstance(voted_for, str):
                raise StateError(f"{path}: invalid voted_for")
            joining = m.get("joining", False)
            if not isinstance(joining, bool):
                raise StateError(f"{path}: invalid joining")
            resume_at = m.get("resume_at")
            unheard = m.get("unheard", [])
            if (resume_at is not None and (not isinstance(resume_at, int) or resume_at < 0)) \
                    or not isinstance(unheard, list) or not all(isinstance(u, str) for u in unheard):
                raise StateError(f"{path}: invalid resume_at or unheard")
        except StateError:
            raise
        except Exception as e:
            raise StateError(f"{path}: unreadable node state ({e}); restore it from a backup; or, to rebuild this node from its peers, move its whole data directory aside and start it while the cluster has a leader") from None
        return cls(role, epoch, leader, history, led_epoch, voted_for, confirm_from, damaged_end, joining,
                   resume_at, list(unheard))

    def note_epoch_start(self, epoch: int, offset: int) -> bool:
        """Record that `epoch` begins at `offset`; True if the history changed."""
        if self.history and self.history[-1][0] >= epoch:
            return False
        self.history.append((epoch, offset))
        return True

    def before_append(self, end: int, epoch_starts: list[tuple[int, int]]) -> "NodeState | None":
        """The state to save before appending at `end` frames that begin `epoch_starts`; None if unchanged.

        Epoch starts at or beyond `end` (an epoch this node began as leader
        but never wrote, or one cut by a truncation) do not describe the bytes
        about to land there: left in place they would answer "where does that
        epoch end" wrongly and cut a replica's acknowledged records (found by
        the simulator, seed 1605).
        """
        if not epoch_starts and all(o < end for _, o in self.history):
            return None
        st = self.with_(history=[h for h in self.history if h[1] < end])
        for e, o in epoch_starts:
            st.note_epoch_start(e, o)
        return st

    def after_append(self, end: int) -> "NodeState | None":
        """The state to save once the log has grown to `end`; None if unchanged.

        A damaged node whose log reached its old end again holds its leader's
        bytes up to there: it is a full copy again.
        """
        if self.damaged_end is not None and end >= self.damaged_end:
            return self.with_(damaged_end=None)
        return None

    def restarted(self, end: int, ack_replicas: int, clean_end: int | None) -> "NodeState":
        """This state for a process that starts again on its old data (not a first start).

        A leader whose last process did not stop cleanly at exactly this end
        (`clean_end`, from the clean-stop note) confirms its log with its
        followers before it takes writes, when K >= 1: a disk may lie
        (fdatasync says yes, the bytes never land), and then recovery finds a
        clean but shorter log that has lost acknowledged records. Only the
        replicas can show that (the durability contract, rule 3), so the
        same F - K + 1 rule and repair as for a cut tail apply
        (daemon/node/repair.py). A clean stop fsynced the log first, so its
        end is trusted.
        """
        if self.role != LEADER or ack_replicas < 1 or clean_end == end:
            return self
        return self.with_(confirm_from=min(end, self.confirm_from if self.confirm_from is not None else end))

    def recovered(self, scan: ScanResult) -> "NodeState":
        """This state after recovery scanned the log (and cut a torn tail, if any).

        - the log's own epochs join the history (the log is the ground truth);
        - epochs that began beyond a cut begin at the new end: an epoch's end
          must never be answered from bytes that are gone;
        - a leader whose recovery cut bytes may have lost records it fsynced
          and acknowledged: `confirm_from` makes it confirm its log with its
          followers before it leads on its own word (docs/protocol.md);
        - any cut marks the node damaged up to the old end (`damaged_end`),
          on any role.
        """
        st = self
        merged = merge_history(st.history, scan.epoch_starts)
        if merged != st.history:
            st = st.with_(epoch=max(st.epoch, scan.last_epoch), history=merged)
        if scan.dropped:
            end = scan.valid_end
            st = st.with_(history=[(e, min(o, end)) for e, o in st.history])
            if st.role == LEADER:
                st = st.with_(confirm_from=min(end, st.confirm_from if st.confirm_from is not None else end))
            st = st.with_(damaged_end=max(scan.file_size, st.damaged_end or 0))
        return st

    def trim_history(self, end: int) -> None:
        """Forget epochs that begin at or after `end` (their records were truncated)."""
        self.history = [(e, o) for e, o in self.history if o < end or e == self.epoch]


class StateRegression(RuntimeError):
    """A bug: a save would undo a promise node-state.json holds."""


def regression(old: NodeState | None, new: NodeState) -> str:
    """Why saving `new` over `old` would break a promise (empty if it would not).

    node-state.json only moves forward: its epoch never goes back (a fence is
    a promise to refuse older leaders), and within one epoch a vote once given
    never changes (one vote per epoch is what keeps two promoters from both
    winning). Every save of the node's state, in production and in the
    simulator, is checked against the state it replaces.
    """
    if old is None:
        return ""
    if new.epoch < old.epoch:
        return f"the epoch would go back from {old.epoch} to {new.epoch}"
    if new.epoch == old.epoch and old.voted_for is not None and new.voted_for != old.voted_for:
        return (f"the vote of epoch {old.epoch} would change from {old.voted_for} to {new.voted_for or 'nobody'} "
                "(a second vote in one epoch can make two leaders)")
    return ""


def epoch_end(history: list[tuple[int, int]], epoch: int, log_end: int) -> tuple[int, int]:
    """Kafka's OffsetsForLeaderEpoch answer for `epoch` in a log with this history.

    Returns (E, end): E is the largest epoch of the history not above
    `epoch` (0 if there is none), and `end` where E's records end here: the
    start of the next epoch, or the log's end. Answering for an epoch this
    log never had with the start of the *next* epoch would claim bytes the
    two logs do not share (KIP-279); answering with E lets the asker cut to
    the smaller of the two ends of E.
    """
    found, end = 0, 0
    for i, (e, _start) in enumerate(history):
        if e > epoch:
            break
        found = e
        end = history[i + 1][1] if i + 1 < len(history) else log_end
    return found, min(end, log_end)


def truncation_point(own_history: list[tuple[int, int]], own_end: int, leader_epoch: int, leader_end: int) -> int:
    """Where a follower cuts its log, given the leader's answer (E, end of E there).

    The smaller of the leader's end of E and the follower's own end of E
    (KIP-101/KIP-279): below it both logs hold the same epochs at the same
    offsets, so they hold the same bytes (one leader per epoch).
    """
    _, own = epoch_end(own_history, leader_epoch, own_end)
    return min(leader_end, own)


def merge_history(stored: list[tuple[int, int]], from_log: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Combine the state file's history with the epochs seen in the log itself.

    The log is the ground truth for epochs that wrote records; the state
    file also knows epochs that began but have not written yet.
    """
    starts: dict[int, int] = {}
    for e, o in stored:
        starts[e] = o
    for e, o in from_log:
        if e == 0:
            continue
        starts[e] = min(o, starts.get(e, o))
    return sorted(starts.items())


def load(path: str) -> NodeState | None:
    """Read the state as the disk holds it, not as a failed process left it
    in the page cache: fsync what is dirty, drop the cached pages, read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            os.fsync(fd)
        except OSError:
            os.fsync(fd)  # a writeback error is reported once; a second failure is the disk failing now
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return NodeState.from_json(b"".join(chunks), path)


CLEAN_STOP = "clean-stop.json"


def save_clean_stop(data_dir: str, end: int) -> None:
    """After a clean stop (the log fsynced and closed): the end it stopped at, durably."""
    replace_json_durably(os.path.join(data_dir, CLEAN_STOP), {"end": end})


def take_clean_stop(data_dir: str) -> int | None:
    """The end the last process stopped cleanly at, or None; the note is removed durably first,
    so a crash of this process is never taken for a clean stop."""
    path = os.path.join(data_dir, CLEAN_STOP)
    try:
        with open(path, "rb") as f:
            raw = f.read(4096)
    except FileNotFoundError:
        return None
    os.unlink(path)
    fsync_dir(data_dir)
    try:
        end = json.loads(raw).get("end")
    except (ValueError, AttributeError):
        return None  # damaged: as if there were none (the safe side)
    return end if isinstance(end, int) and not isinstance(end, bool) and end >= 0 else None


def save(path: str, state: NodeState) -> None:
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        write_full(fd, state.to_json())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))
