"""A node's durable identity: role, epoch, whom it follows, epoch history.

Replaced atomically (write temp, fsync, rename, fsync directory), so a crash
leaves either the old or the new state, never a mix. A restart never changes
a node's role by itself: only `zwal promote` (or learning of a newer epoch)
does, and it writes this file before acting on the change.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from daemon.wal.writer import fsync_dir, write_full

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

    def follower_of(self, epoch: int, leader: str | None) -> "NodeState":
        """This node as a follower at `epoch`, keeping its history and led_epoch."""
        return NodeState(FOLLOWER, epoch, leader, list(self.history), self.led_epoch)

    def to_json(self) -> bytes:
        return json.dumps(
            {"version": STATE_VERSION, "role": self.role, "epoch": self.epoch, "leader": self.leader,
             "history": [list(h) for h in self.history], "led_epoch": self.led_epoch},
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
        except StateError:
            raise
        except Exception as e:
            raise StateError(f"{path}: unreadable node state ({e}); restore it or remove the node's data directory") from None
        return cls(role, epoch, leader, history, led_epoch)

    def note_epoch_start(self, epoch: int, offset: int) -> bool:
        """Record that `epoch` begins at `offset`; True if the history changed."""
        if self.history and self.history[-1][0] >= epoch:
            return False
        self.history.append((epoch, offset))
        return True

    def trim_history(self, end: int) -> None:
        """Forget epochs that begin after `end` (their records were truncated)."""
        self.history = [(e, o) for e, o in self.history if o <= end or e == self.epoch]


def epoch_end(history: list[tuple[int, int]], epoch: int, log_end: int) -> int:
    """Where records of `epoch` (and older) end in a log with this history.

    The start of the first later epoch, or the log's end if none is later.
    This is the answer a leader gives a rejoining node (Kafka's
    OffsetsForLeaderEpoch): its bytes beyond this offset diverge.
    """
    for e, start in history:
        if e > epoch:
            return min(start, log_end)
    return log_end


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
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return NodeState.from_json(data, path)


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
