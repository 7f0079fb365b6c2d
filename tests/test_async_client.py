"""AsyncClient (issue 22 item 6): the blocking Client's API as coroutines, over zmq.asyncio, with the
same retries, leader discovery, read rules and errors, because both run daemon/client/core.py. Real
nodes, real CURVE, real fsync."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time

import pytest

from daemon.client.core import ClientCore
from zwal import AsyncClient, Client, NoLeader, NotLeader, Unavailable, WriteResult

pytestmark = pytest.mark.slow


def test_the_two_clients_have_one_api():
    """Every public call of Client exists on AsyncClient with the same parameters, as a coroutine
    (watch: an async iterator); and neither restates a rule: both inherit the core's steps."""
    public = [n for n, f in inspect.getmembers(Client, inspect.isfunction) if not n.startswith("_")]
    assert {"set", "delete", "set_many", "watch", "get", "read", "status", "ping", "admin", "request"} <= set(public)
    for name in public:
        a, b = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.signature(a).parameters.keys() == inspect.signature(b).parameters.keys(), name
        if name == "close":
            continue
        if name == "watch":
            assert not inspect.iscoroutinefunction(b)
        else:
            assert inspect.iscoroutinefunction(b), f"AsyncClient.{name} is not a coroutine function"
    assert inspect.signature(Client.__init__).parameters.keys() == inspect.signature(AsyncClient.__init__).parameters.keys()
    steps = {n for n in vars(ClientCore) if n.startswith("_") and not n.startswith("__")}
    for cls in (Client, AsyncClient):
        assert not steps & set(vars(cls)) - {"_connect"}, f"{cls.__name__} overrides a core step"


def test_writes_reads_batches_and_watch_through_a_follower(make_cluster):
    """Pointed at a follower first, the async client is redirected to the leader (not_leader ->
    leader_endpoint), gets the same offsets a blocking client sees, and watches its own writes."""
    c = make_cluster(3, ack_replicas=1)
    c.start_all()

    async def run() -> tuple[list[WriteResult], list[tuple[str, bytes, bytes | None]], bytes | None]:
        eps = [c.endpoint("node2"), c.endpoint("node1"), c.endpoint("node3")]
        async with AsyncClient(eps, config=c.config, deadline=15.0) as a:
            w1 = await a.set("a", "1")
            assert a.current == c.endpoint("node1")  # followed the redirect
            many = await a.set_many([("b", "2"), ("c", "3"), ("a", None)])
            d = await a.delete("b")
            r = await a.read("c")
            assert r.value == b"3" and r.node == "node1" and r.linearizable and not r.stale
            seen = [(rec.op, rec.key, rec.value) async for rec in a.watch(w1.offset, follow=False)]
            return [w1, *many, d], seen, await a.get("a")

    writes, seen, a_now = asyncio.run(run())
    assert a_now is None
    assert [w.offset for w in writes] == sorted(w.offset for w in writes)
    assert all(w.end > w.offset and w.epoch == 1 for w in writes)
    assert seen == [("set", b"a", b"1"), ("set", b"b", b"2"), ("set", b"c", b"3"), ("del", b"a", None),
                    ("del", b"b", None)]
    # The blocking client reads the same state.
    with c.client() as b:
        assert b.get("c") == b"3" and b.get("b") is None
        assert b.status()["end"] == writes[-1].end


def test_many_tasks_at_once_each_with_its_own_client(make_cluster):
    """64 concurrent tasks on one event loop: every write acknowledged once, at its own offset,
    and group commit shares fsyncs between them (fewer syncs than writes)."""
    c = make_cluster(1, ack_replicas=0)
    c.start_all()

    async def writer(i: int) -> list[WriteResult]:
        async with AsyncClient(config=c.config, deadline=15.0) as a:
            return [await a.set(f"t{i}-{n}", "v") for n in range(10)]

    async def run() -> list[WriteResult]:
        return [w for ws in await asyncio.gather(*(writer(i) for i in range(64))) for w in ws]

    ws = asyncio.run(run())
    assert len(ws) == 640 and len({w.offset for w in ws}) == 640
    with c.client() as b:
        assert all(b.get(f"t{i}-9") == b"v" for i in (0, 31, 63))


def test_a_cancelled_call_leaves_the_client_usable(make_cluster):
    """Cancel a long-polling watch mid-wait: the client closes that socket (its late reply cannot be
    taken for the next call's) and the next call works."""
    c = make_cluster(1, ack_replicas=0)
    c.start_all()

    async def run() -> tuple[WriteResult, list[bytes]]:
        async with AsyncClient(config=c.config) as a:
            w = await a.set("x", "1")

            async def follow() -> None:
                async for _ in a.watch(w.end, wait=5.0):
                    pass

            t = asyncio.create_task(follow())
            await asyncio.sleep(0.5)  # the watch waits in the node for a record
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
            assert a.sock is None
            w2 = await a.set("x", "2")
            got = [rec.value async for rec in a.watch(w.offset, follow=False)]
            assert await a.get("x") == b"2"
            return w2, got

    w2, got = asyncio.run(run())
    assert got == [b"1", b"2"] and w2.epoch == 1


def test_no_leader_and_no_node_raise_the_clients_errors(make_cluster):
    """The read rules hold in the async client too: with the leader stopped a read raises NoLeader
    unless stale=True, and then says it is stale; a write to a lone follower is NotLeader when pinned;
    nobody at all is Unavailable within the deadline."""
    c = make_cluster(3, ack_replicas=1, heartbeat_interval=0.2)
    c.start_all()
    with c.client() as b:
        b.set("k", "v")
    c.wait_converged()
    c.signal("node1", signal.SIGSTOP)
    try:
        async def run() -> None:
            async with AsyncClient(config=c.config, timeout=0.3, deadline=1.5) as a:
                with pytest.raises(NoLeader):
                    await a.read("k")
                r = await a.read("k", stale=True)
                assert r.value == b"v" and r.stale and not r.linearizable and r.node in ("node2", "node3")
                with pytest.raises(NotLeader):
                    await a.request("set", endpoint=c.endpoint("node2"), key=b"k", value=b"w")
            async with AsyncClient(["tcp://127.0.0.1:1"], timeout=0.2, deadline=0.5) as nobody:
                t0 = time.monotonic()
                with pytest.raises(Unavailable):
                    await nobody.ping()
                assert time.monotonic() - t0 < 2.0

        asyncio.run(run())
    finally:
        c.signal("node1", signal.SIGCONT)


def test_breaking_out_of_a_watch_does_not_break_the_next_call(make_cluster):
    """`async for ... : break`, then another call on the same client: the abandoned async generator is
    finalized (aclose) by the loop while the next call is in flight, and its `except BaseException`
    closes the socket that call is using."""
    c = make_cluster(1, ack_replicas=0)
    c.start_all()

    async def run():
        errors = []
        async with AsyncClient(config=c.config, timeout=1.0, deadline=5.0) as a:
            w = await a.set("x", "0")
            for i in range(20):
                async for _ in a.watch(w.offset, follow=False):
                    break
                try:
                    await a.set("x", str(i))
                except BaseException as e:  # noqa: BLE001
                    errors.append(repr(e))
        return errors

    errors = asyncio.run(run())
    with c.client() as b:
        landed = b.get("x")
    assert errors == [], (errors[:2], len(errors), "x is now", landed)
