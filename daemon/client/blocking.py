"""The blocking client: `ClientCore`'s rules (core.py) over a plain pyzmq DEALER.

Lazy Pirate retries, leader discovery and safe retries are decided in core.py,
once for this client and `AsyncClient` alike; this module only does the I/O
the core asks for.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterable, Iterator

import zmq

from daemon.auth.creds import Credentials, Plain
from daemon.client.core import (  # noqa: F401  (re-exported: the names callers have always imported from here)
    BATCH_BYTES, ERRORS, Action, BadOffset, BadRequest, Busy, ClientCore, Close, Connect, Emit, Forbidden,
    FsyncFailed, InvalidRecord, NoLeader, NoSpace, NotEnoughReplicas, NotLeader, OffsetCompacted, ReadResult,
    Recv, Refused, Send, ShuttingDown, Sleep, StaleEpoch, Statuses, Steps, Unavailable, UnknownOp, WriteFailed,
    WriteResult, WrongCluster, ZwalError, _b, damage, dealer, endpoints_from_config, error_from_reply, stale_order)
from daemon.wire.client import WATCH_DEFAULT_BYTES, WatchRecord


class Client(ClientCore):
    """Blocking client. Not thread-safe: use one per thread.

    `timeout` bounds one attempt; `deadline` bounds a whole call including
    retries, failovers and backoff.
    """

    def __init__(self, endpoints: list[str] | None = None, *, config: str | None = None, timeout: float = 1.0,
                 deadline: float = 10.0, client_id: bytes | None = None, context: zmq.Context | None = None,
                 role: str = "client", cert: str | None = None, server_key: str | None = None,
                 creds: Credentials | Plain | None = None, cluster_id: str | None = None) -> None:
        super().__init__(endpoints, config=config, timeout=timeout, deadline=deadline, client_id=client_id, role=role,
                         cert=cert, server_key=server_key, creds=creds, cluster_id=cluster_id)
        self.ctx = context or zmq.Context.instance()
        self.sock: zmq.Socket | None = None

    # -- the I/O the core asks for ---------------------------------------------------------

    def _do(self, action: Action) -> Any:
        if isinstance(action, Send):
            assert self.sock is not None
            self.sock.send(action.data)
        elif isinstance(action, Recv):
            assert self.sock is not None
            if not self.sock.poll(int(action.timeout * 1000)):
                return None
            return self.sock.recv()
        elif isinstance(action, Connect):
            self._connect(action.endpoint)
        elif isinstance(action, Close):
            self.close()
        elif isinstance(action, Sleep):
            time.sleep(action.seconds)
        elif isinstance(action, Statuses):
            return fetch_statuses([(ep, ep) for ep in self.endpoints], action.timeout, self.creds, self.cluster_id,
                                  self.ctx)
        else:
            raise TypeError(f"not a client action: {action!r}")
        return None

    def _run(self, steps: Steps) -> Any:
        try:
            action = next(steps)
            while True:
                action = steps.send(self._do(action))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def _iterate(self, steps: Steps) -> Iterator[Any]:
        try:
            action = next(steps)
            while True:
                if isinstance(action, Emit):
                    yield action.value
                    action = steps.send(None)
                else:
                    action = steps.send(self._do(action))
        except StopIteration:
            return
        finally:
            steps.close()

    def _connect(self, endpoint: str) -> None:
        self.close()
        self.sock = dealer(self.ctx, endpoint, creds=self.creds)
        self.current = endpoint

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        self.current = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *a: object) -> None:
        self.close()

    # -- the API (docs/client.md) ------------------------------------------------------------

    def request(self, op: str, *, deadline: float | None = None, endpoint: str | None = None,
                attempt: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request until it succeeds, fails for good, or the deadline passes."""
        return self._run(self._request(op, deadline=deadline, endpoint=endpoint, attempt=attempt, **fields))

    def set(self, key: bytes | str, value: bytes | str) -> WriteResult:
        return self._run(self._write("set", key=_b(key), value=_b(value)))

    def delete(self, key: bytes | str) -> WriteResult:
        return self._run(self._write("del", key=_b(key)))

    def set_many(self, items: Iterable[tuple[bytes | str, bytes | str | None]]) -> list[WriteResult]:
        """Write many records with few messages: the `batch` op (docs/protocol.md), each (key, value) its own
        record with its own offset and request id; a value of None deletes the key. In log order, one result
        per item. A batch that fails part-way is retried whole with the same ids, so a write that landed is
        answered with its original offset, never written twice; an error that is not retryable is raised
        after the writes before it in the batch may have landed (their results are in the error's reply)."""
        return self._run(self._set_many(items))

    def watch(self, from_offset: int = 0, *, follow: bool = True, wait: float = 5.0,
              max_bytes: int = WATCH_DEFAULT_BYTES) -> Iterator[WatchRecord]:
        """Committed records from `from_offset` (a record's offset, or a reply's `next`), in log order.

        Follows redirects and leader changes, and resumes from the end of the
        last record it yielded: no record twice, none skipped. With `follow`
        it waits for new records forever (riding out retryable errors: no
        node answers, no leader yet); without, it stops once it reached the commit point.
        Raises OffsetCompacted, BadOffset, Forbidden."""
        return self._iterate(self._watch(from_offset, follow, wait, max_bytes))

    def get(self, key: bytes | str) -> bytes | None:
        return self.read(key).value

    def read(self, key: bytes | str, endpoint: str | None = None, stale: bool = False) -> ReadResult:
        """The leader's answer, or `NoLeader` when no leader answers within the deadline.

        A follower's answer may miss acknowledged writes, so it is returned only with
        `stale=True`, and then only when no leader answers: the result has `stale=True`
        and names the node. The most advanced node answers first. A node whose log is
        damaged (recovery cut bytes from it) never answers; when only such nodes are
        left, `NoLeader`. With `endpoint`, only that node is asked, by the same rules.
        """
        return self._run(self._read(key, endpoint, stale))

    def status(self, endpoint: str | None = None, deadline: float | None = None) -> dict[str, Any]:
        return self._run(self._status(endpoint, deadline))

    def ping(self, endpoint: str | None = None, deadline: float | None = None) -> dict[str, Any]:
        return self.request("ping", endpoint=endpoint, deadline=deadline)

    def admin(self, op: str, endpoint: str, deadline: float = 3.0, **args: Any) -> dict[str, Any]:
        return self.request(op, endpoint=endpoint, deadline=deadline, args=args)


def fetch_statuses(targets: list[tuple[str, str]], timeout: float, creds: Credentials | Plain | None = None,
                   cluster_id: str | None = None,
                   context: zmq.Context | None = None) -> dict[str, dict[str, Any] | None]:
    """Ask every node for its status at once; None for those that do not answer."""

    def one(ep: str) -> dict[str, Any] | None:
        with Client([ep], timeout=timeout, deadline=timeout, creds=creds, cluster_id=cluster_id,
                    context=context) as c:
            try:
                return c.status(endpoint=ep, deadline=timeout)
            except ZwalError:
                return None

    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as ex:
        results = list(ex.map(lambda t: one(t[1]), targets))
    return {name: r for (name, _), r in zip(targets, results)}
