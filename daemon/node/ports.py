"""The narrow interfaces a role reacts through: the same role code runs in
production (daemon/node/zmq_ports.py: ZeroMQ, the WAL writer, the syncer
thread) and in the simulator (tests/sim/node.py: its network and disk).

Invariants the roles rely on, whoever implements a port:
- `Log.append` calls `done` exactly once, after the bytes are durable (or
  with the error that says they are not); at most one append is in flight;
- `Host.save_state` has the new state durable before it returns, or raises
  (and then the old state still holds);
- a port never decides anything: it moves bytes and reports what happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

from daemon.node.identity import NodeState
from daemon.node.kv import KVState
from daemon.ops.logs import RateGate

if TYPE_CHECKING:
    from daemon.wal import retention
    from daemon.node.peers import PeerView
    from daemon.node.snapshotting import Snapshotter
    from daemon.node.transfer import Partial

Envelope = list[bytes]


@dataclass
class SyncResult:
    """What one append (write + fdatasync) came to: `error` None means durable up to `end`."""

    end: int = 0
    error: BaseException | None = None
    fsync_s: float = 0.0
    records: int = 0
    nbytes: int = 0
    append_s: float = 0.0


@dataclass
class Transition:
    """What a role ends with: the next state, or None to stop."""

    state: NodeState | None
    reason: str
    reload: bool = True  # replay the log into a fresh state before the next role


class FsyncFailure(Exception):
    """Raised out of a role: the node must exit non-zero and be restarted."""


class StateNotSaved(FsyncFailure):
    """The node state could not be saved for want of a file descriptor. An
    admin op is refused (nothing changed); anywhere else it still restarts."""


class NoSpace(FsyncFailure):
    """The node state could not be saved: the disk is full (ENOSPC/EDQUOT) before
    the new file replaced the old one, so the old state still holds. A
    follower backs off and tries again; anywhere else it restarts."""


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds: timers and deadlines."""
        ...

    def wall(self) -> float:
        """Wall-clock seconds since the epoch: the time a leader stamps on records (retry windows)."""
        ...


class Events(Protocol):
    """The logger, injected: simulator traces carry the production event names."""

    def event(self, name: str, **kv: Any) -> None: ...
    def warn(self, name: str, **kv: Any) -> None: ...
    def error(self, name: str, **kv: Any) -> None: ...


class Log(Protocol):
    @property
    def end(self) -> int: ...
    @property
    def busy(self) -> bool: ...
    def read_chunk(self, offset: int, end: int, max_bytes: int) -> bytes: ...
    def read_raw(self, offset: int, n: int) -> bytes:
        """The log's bytes at [offset, offset + n), frame boundaries or not (fewer at the end)."""
        ...
    def append(self, data: bytes, records: int, done: Callable[[SyncResult], None]) -> None: ...
    def truncate_suffix(self, offset: int, last_epoch: int) -> tuple[int, str]:
        """Cut the log to `offset`, the removed bytes saved aside first: (bytes cut, where saved)."""
        ...
    @property
    def oldest(self) -> int:
        """The first offset the log still holds (retention moves it)."""
        ...
    def segments_view(self) -> "list[retention.Segment]":
        """The log's segments in offset order; all but the last are sealed."""
        ...
    def retire(self, upto: int, reason: str) -> tuple[int, int]:
        """Delete the sealed segments below `upto` (a segment's base), durably and logged; never while busy.
        Returns (segments, bytes) deleted: fewer than asked when the file system refused some (each is
        tried again at the next retire)."""
        ...


class TransferPort(Protocol):
    """A follower's snapshot transfer on disk (daemon/node/install.py): moves bytes, decides nothing."""

    def partial(self) -> "Partial | None":
        """The transfer a stopped process left: its file's offset, crc and bytes so far."""
        ...
    def begin(self, offset: int, crc: int, pos: int) -> None:
        """Open this transfer's temp file keeping its first `pos` bytes; other transfers' files are removed."""
        ...
    def write(self, pos: int, data: bytes) -> None: ...
    def abort(self) -> None:
        """Give the transfer up (its temp file removed)."""
        ...
    def install(self, offset: int, crc: int, size: int) -> str:
        """fsync, verify the whole file, install it atomically; "" when installed, else why not (file removed)."""
        ...


class ClientPort(Protocol):
    """Replies to clients (daemon/node/outbox.py): never dropped while the connection lives."""

    @property
    def budget(self) -> int:
        """Bytes of replies one connection may leave unread before its requests are refused."""
        ...
    def send(self, frames: list[bytes]) -> None: ...
    def congested(self, peer: bytes) -> bool: ...
    def refuse(self, peer: bytes) -> None: ...
    def waiting(self, peer: bytes) -> int: ...
    def would_exceed(self, peer: bytes, size: int) -> bool: ...
    def stats(self) -> dict[str, int]: ...


class ReplPort(Protocol):
    """The replication endpoint: a message to whoever sent `envelope` (dropped when its queue is full)."""

    def send(self, envelope: Envelope, frames: list[bytes]) -> None: ...


class PeerPort(Protocol):
    """Status probes to the other nodes; what they said is in `view`."""

    @property
    def view(self) -> "PeerView": ...
    @property
    def next_at(self) -> float: ...
    def maybe_send(self, now: float, my_epoch: int) -> None: ...
    def ask_now(self) -> None: ...


class LeaderLink(Protocol):
    """A follower's connection to the leader's replication endpoint."""

    def connect(self, leader: str | None) -> bool:
        """Drop the old connection; open one to `leader` (False: none opened)."""
        ...
    @property
    def connected(self) -> bool: ...
    def send(self, body: bytes) -> None: ...
    def send_parts(self, frames: list[bytes]) -> None:
        """A message of several frames (repair data: header, bytes)."""
        ...


class Config(Protocol):
    @property
    def cluster_id(self) -> str: ...
    @property
    def fsync_mode(self) -> str: ...
    @property
    def ack_replicas(self) -> int: ...
    @property
    def replication_timeout(self) -> float: ...
    @property
    def heartbeat_interval(self) -> float: ...
    @property
    def peer_probe_interval(self) -> float: ...
    @property
    def fetch_max_bytes(self) -> int: ...
    @property
    def max_uncommitted_bytes(self) -> int: ...
    @property
    def batch_max_records(self) -> int: ...
    @property
    def batch_max_bytes(self) -> int: ...
    @property
    def names(self) -> list[str]: ...
    @property
    def retry_window_seconds(self) -> float: ...
    @property
    def retry_budget_bytes(self) -> int: ...
    @property
    def snapshot_bytes(self) -> int: ...


class Coordinator(Protocol):
    """The leader lease and the election, off the main loop (daemon/failover/coordinator.py)."""

    enabled: bool
    ttl: float

    @property
    def lease(self) -> Any: ...
    def lease_ok(self, now: float) -> bool:
        """May a leader decide a write's `ok` or a fresh read now? (always, with kind = "none")"""
        ...
    def take(self) -> list[Any]: ...
    def publish(self, role: str, epoch: int) -> None: ...
    def heartbeat(self, now: float, problem: str | None = None) -> None:
        """The leader's loop turned; `problem` (if any) says why it should let its lease run out."""
        ...
    def release(self, reason: str, self_fence: bool = False) -> None: ...
    def hand_off(self, to: str, epoch: int, reason: str) -> None:
        """A switchover: release the lease, naming `to` for the election first."""
        ...
    def status(self, now: float) -> dict[str, Any]: ...


class Host(Protocol):
    """What a role sees of its node: the state that outlives roles, and the ports."""

    @property
    def name(self) -> str: ...
    @property
    def cfg(self) -> Config: ...
    @property
    def state(self) -> NodeState: ...
    @property
    def kv(self) -> KVState: ...
    @property
    def log(self) -> Log: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def events(self) -> Events: ...
    @property
    def client(self) -> ClientPort: ...
    @property
    def repl(self) -> ReplPort: ...
    @property
    def peers(self) -> PeerPort: ...
    @property
    def link(self) -> LeaderLink: ...
    @property
    def keys_generation(self) -> int: ...
    @property
    def snapshots(self) -> "Snapshotter":
        """When to snapshot (daemon/node/snapshotting.py) over the node's SnapshotPort; outlives roles."""
        ...
    @property
    def coord(self) -> "Coordinator":
        """The leader lease and the election (daemon/failover/coordinator.py); NoCoordinator when manual."""
        ...
    @property
    def transfer(self) -> TransferPort:
        """A follower's snapshot transfer on disk (daemon/node/install.py)."""
        ...
    def save_state(self, st: NodeState, patience: float = ...) -> None: ...
    def endpoint_of(self, name: str) -> str | None: ...
    def incarnation(self) -> int: ...
    def node_keys(self) -> set[str] | None:
        """Names whose node keys are in the allow-list now (None: no allow-list)."""
        ...
    def extra_status(self) -> dict[str, Any]: ...
    def batch_metrics(self, records: int, nbytes: int, append_s: float, fsync_s: float) -> None: ...


class Limited(RateGate):
    """A RateGate (daemon/ops/logs.py) on the host's clock, logging through
    the host's events port."""

    def warn(self, events: Events, now: float, name: str, error: bool = False, **kv: Any) -> bool:
        if not self.admit(now, kv):
            return False
        (events.error if error else events.warn)(name, **kv)
        return True


Done = Callable[[SyncResult], None]
