"""The asyncio client: `ClientCore`'s rules (core.py) over a `zmq.asyncio` DEALER.

The same retries, leader discovery, read rules, batches, watch and error
classes as the blocking `Client`, because both run the same core; only the
waiting differs. One `AsyncClient` serves one task at a time (its calls share
one socket): run concurrent requests on several clients.

    async with AsyncClient(config="cluster.toml") as c:
        w = await c.set("k", "v")
        v = await c.get("k")
        async for rec in c.watch(w.offset, follow=False):
            ...
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Iterable

import zmq
import zmq.asyncio

from daemon.auth.creds import Credentials, Plain
from daemon.client.core import (Action, ClientCore, Close, Connect, Emit, ReadResult, Recv, Send, Sleep, Statuses,
                                Steps, WriteResult, ZwalError, _b, dealer)
from daemon.wire.client import WATCH_DEFAULT_BYTES, WatchRecord


def _async_context(context: zmq.Context | None) -> zmq.asyncio.Context:
    """An asyncio context: the one given, or a shadow of the given (or the global) plain one, so
    both clients in one process share ZeroMQ's I/O threads."""
    if isinstance(context, zmq.asyncio.Context):
        return context
    return zmq.asyncio.Context.shadow(context or zmq.Context.instance())


class AsyncClient(ClientCore):
    """asyncio client: every call of `Client` as a coroutine, and `watch` as an async iterator.

    `timeout` bounds one attempt; `deadline` bounds a whole call including
    retries, failovers and backoff. Cancelling a call closes its socket (the next
    call opens a new one), so a late reply can never be taken for another call's.
    """

    def __init__(self, endpoints: list[str] | None = None, *, config: str | None = None, timeout: float = 1.0,
                 deadline: float = 10.0, client_id: bytes | None = None, context: zmq.Context | None = None,
                 role: str = "client", cert: str | None = None, server_key: str | None = None,
                 creds: Credentials | Plain | None = None, cluster_id: str | None = None) -> None:
        super().__init__(endpoints, config=config, timeout=timeout, deadline=deadline, client_id=client_id, role=role,
                         cert=cert, server_key=server_key, creds=creds, cluster_id=cluster_id)
        self.ctx = _async_context(context)
        self.sock: zmq.asyncio.Socket | None = None

    # -- the I/O the core asks for ---------------------------------------------------------

    async def _do(self, action: Action) -> Any:
        if isinstance(action, Send):
            assert self.sock is not None
            await self.sock.send(action.data)
        elif isinstance(action, Recv):
            assert self.sock is not None
            if not await self.sock.poll(int(action.timeout * 1000)):
                return None
            return await self.sock.recv()
        elif isinstance(action, Connect):
            self._connect(action.endpoint)
        elif isinstance(action, Close):
            self.close()
        elif isinstance(action, Sleep):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, Statuses):
            return await fetch_statuses([(ep, ep) for ep in self.endpoints], action.timeout, self.creds,
                                        self.cluster_id, self.ctx)
        else:
            raise TypeError(f"not a client action: {action!r}")
        return None

    async def _run(self, steps: Steps) -> Any:
        try:
            action = next(steps)
            while True:
                action = steps.send(await self._do(action))
        except StopIteration as done:
            return done.value
        except BaseException as e:  # cancelled (or failed) mid-call: a reply may still come to this socket
            if not isinstance(e, ZwalError):
                self.close()
            raise
        finally:
            steps.close()

    async def _iterate(self, steps: Steps) -> AsyncIterator[Any]:
        try:
            action = next(steps)
            while True:
                if isinstance(action, Emit):
                    yield action.value
                    action = steps.send(None)
                else:
                    action = steps.send(await self._do(action))
        except StopIteration:
            return
        except BaseException as e:  # a watch cancelled while it long-polls: its reply is still on the way
            # Not GeneratorExit: a watch left early (break) is closed by the loop later, perhaps while
            # another call uses the socket; paused at an Emit, it has no request in flight.
            if not isinstance(e, (ZwalError, GeneratorExit)):
                self.close()
            raise
        finally:
            steps.close()

    def _connect(self, endpoint: str) -> None:
        self.close()
        self.sock = dealer(self.ctx, endpoint, creds=self.creds)  # type: ignore[assignment]  # an asyncio context's socket
        self.current = endpoint

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None
        self.current = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *a: object) -> None:
        self.close()

    # -- the API (docs/client.md): Client's, awaited -----------------------------------------

    async def request(self, op: str, *, deadline: float | None = None, endpoint: str | None = None,
                      attempt: float | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request until it succeeds, fails for good, or the deadline passes."""
        return await self._run(self._request(op, deadline=deadline, endpoint=endpoint, attempt=attempt, **fields))

    async def set(self, key: bytes | str, value: bytes | str) -> WriteResult:
        return await self._run(self._write("set", key=_b(key), value=_b(value)))

    async def delete(self, key: bytes | str) -> WriteResult:
        return await self._run(self._write("del", key=_b(key)))

    async def set_many(self, items: Iterable[tuple[bytes | str, bytes | str | None]]) -> list[WriteResult]:
        """Client.set_many: the `batch` op, retried whole with the same ids."""
        return await self._run(self._set_many(items))

    def watch(self, from_offset: int = 0, *, follow: bool = True, wait: float = 5.0,
              max_bytes: int = WATCH_DEFAULT_BYTES) -> AsyncIterator[WatchRecord]:
        """Client.watch as an async iterator: `async for rec in c.watch(0): ...`."""
        return self._iterate(self._watch(from_offset, follow, wait, max_bytes))

    async def get(self, key: bytes | str) -> bytes | None:
        return (await self.read(key)).value

    async def read(self, key: bytes | str, endpoint: str | None = None, stale: bool = False) -> ReadResult:
        """Client.read: the leader's answer, or NoLeader; a follower's only with stale=True."""
        return await self._run(self._read(key, endpoint, stale))

    async def status(self, endpoint: str | None = None, deadline: float | None = None) -> dict[str, Any]:
        return await self._run(self._status(endpoint, deadline))

    async def ping(self, endpoint: str | None = None, deadline: float | None = None) -> dict[str, Any]:
        return await self.request("ping", endpoint=endpoint, deadline=deadline)

    async def admin(self, op: str, endpoint: str, deadline: float = 3.0, **args: Any) -> dict[str, Any]:
        return await self.request(op, endpoint=endpoint, deadline=deadline, args=args)


async def fetch_statuses(targets: list[tuple[str, str]], timeout: float, creds: Credentials | Plain | None = None,
                         cluster_id: str | None = None,
                         context: zmq.Context | None = None) -> dict[str, dict[str, Any] | None]:
    """Ask every node for its status at once; None for those that do not answer."""

    async def one(ep: str) -> dict[str, Any] | None:
        async with AsyncClient([ep], timeout=timeout, deadline=timeout, creds=creds, cluster_id=cluster_id,
                               context=context) as c:
            try:
                return await c.status(endpoint=ep, deadline=timeout)
            except ZwalError:
                return None

    results = await asyncio.gather(*(one(ep) for _, ep in targets))
    return {name: r for (name, _), r in zip(targets, results)}
