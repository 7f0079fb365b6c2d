"""A small client for etcd's v3 JSON gateway (etcd 3.4: /v3/...), over urllib3.

Why this and not a library (docs/failover.md, "The etcd client"): the
`etcd3` package is unmaintained and breaks on protobuf >= 4; `etcd3gw` is
maintained but talks to one endpoint, so rotation would be ours anyway.
Patroni's etcd3 client is the model: the JSON gateway over urllib3, with
endpoint rotation.

Bounds: each HTTP request has `timeout` seconds (connect and read) and is
not retried on the same endpoint; on a connection error or a timeout the
next endpoint is tried, once each. A call therefore returns or raises
`EtcdUnavailable` within len(endpoints) x timeout. The lease logic
(daemon/failover/lease.py) counts on that bound.

The gateway's JSON: keys and values are base64; int64 fields (revisions,
lease ids, TTLs) arrive as strings, and fields equal to zero are left out.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import urllib3


class EtcdUnavailable(Exception):
    """No endpoint answered within the call's bound."""


class EtcdError(Exception):
    """etcd answered with an error (HTTP status or gRPC error body)."""


class LeaseLost(Exception):
    """The lease does not exist any more (expired or revoked)."""


@dataclass(frozen=True, slots=True)
class KV:
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Compare:
    key: str
    target: Literal["MOD", "CREATE", "VALUE", "LEASE"]
    value: int | bytes
    result: Literal["EQUAL", "GREATER", "LESS", "NOT_EQUAL"] = "EQUAL"


@dataclass(frozen=True, slots=True)
class Put:
    key: str
    value: bytes
    lease: int = 0


@dataclass(frozen=True, slots=True)
class Delete:
    key: str


@dataclass(frozen=True, slots=True)
class Get:
    key: str


Op = Put | Delete | Get


@dataclass(slots=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]] = field(default_factory=list)


def _b64(b: bytes | str) -> str:
    return base64.b64encode(b.encode() if isinstance(b, str) else b).decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.b64decode(s)


def _int(d: dict[str, Any], k: str) -> int:
    return int(d.get(k) or 0)


def _kv(d: dict[str, Any]) -> KV:
    return KV(_unb64(d.get("value", "")), _int(d, "mod_revision"), _int(d, "create_revision"), _int(d, "lease"))


def _compare(c: Compare) -> dict[str, Any]:
    out: dict[str, Any] = {"key": _b64(c.key), "result": c.result, "target": c.target}
    match c.target:
        case "MOD":
            out["mod_revision"] = str(c.value)
        case "CREATE":
            out["create_revision"] = str(c.value)
        case "VALUE":
            assert isinstance(c.value, bytes)
            out["value"] = _b64(c.value)
        case "LEASE":
            out["lease"] = str(c.value)
    return out


def _op(o: Op) -> dict[str, Any]:
    match o:
        case Put():
            return {"request_put": {"key": _b64(o.key), "value": _b64(o.value), **({"lease": str(o.lease)}
                                                                                    if o.lease else {})}}
        case Delete():
            return {"request_delete_range": {"key": _b64(o.key)}}
        case Get():
            return {"request_range": {"key": _b64(o.key)}}


class EtcdClient:
    def __init__(self, endpoints: list[str], timeout: float = 1.0) -> None:
        if not endpoints:
            raise ValueError("an etcd client needs at least one endpoint")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout = timeout
        self._i = 0  # the endpoint that answered last: tried first
        self._http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=timeout, read=timeout))

    def _call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        errors = []
        for k in range(len(self.endpoints)):
            i = (self._i + k) % len(self.endpoints)
            url = self.endpoints[i] + path
            try:
                r = self._http.request("POST", url, body=data, headers={"Content-Type": "application/json"})
            except urllib3.exceptions.HTTPError as e:
                errors.append(f"{self.endpoints[i]}: {type(e).__name__}")
                continue
            if r.status == 503 or r.status >= 500 and b"no leader" in r.data:
                errors.append(f"{self.endpoints[i]}: HTTP {r.status}")
                continue  # a member without a quorum: another may have one
            self._i = i
            try:
                out: dict[str, Any] = json.loads(r.data or b"{}")
            except ValueError:
                raise EtcdError(f"{url}: HTTP {r.status}, not JSON: {r.data[:200]!r}") from None
            if r.status != 200 or "error" in out and "result" not in out:
                msg = str(out.get("message") or out.get("error") or r.data[:200])
                if "lease not found" in msg:
                    raise LeaseLost(msg)
                if "no leader" in msg or "timed out" in msg:
                    errors.append(f"{self.endpoints[i]}: {msg}")
                    continue
                raise EtcdError(f"{url}: HTTP {r.status}: {msg}")
            return out
        raise EtcdUnavailable("no etcd endpoint answered: " + "; ".join(errors))

    # -- leases ----------------------------------------------------------------------

    def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: (id, the TTL etcd granted, which may be above `ttl`)."""
        r = self._call("/v3/lease/grant", {"TTL": str(ttl)})
        return _int(r, "ID"), _int(r, "TTL")

    def keepalive(self, lease: int) -> int:
        """Renew `lease`: the TTL it has again. Raises LeaseLost when it is gone."""
        r = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        res = r.get("result", r)
        ttl = _int(res, "TTL")
        if ttl <= 0:
            raise LeaseLost(f"lease {lease:x} has expired or was revoked")
        return ttl

    def revoke(self, lease: int) -> None:
        try:
            self._call("/v3/lease/revoke", {"ID": str(lease)})
        except LeaseLost:
            pass

    # -- keys --------------------------------------------------------------------------

    def get(self, key: str) -> KV | None:
        r = self._call("/v3/kv/range", {"key": _b64(key)})
        kvs = r.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def put(self, key: str, value: bytes, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return _int(self._call("/v3/kv/put", body).get("header", {}), "revision")

    def delete(self, key: str) -> bool:
        return _int(self._call("/v3/kv/deleterange", {"key": _b64(key)}), "deleted") > 0

    def txn(self, compare: list[Compare], success: list[Op], failure: list[Op] | None = None) -> TxnResult:
        r = self._call("/v3/kv/txn", {"compare": [_compare(c) for c in compare],
                                      "success": [_op(o) for o in success],
                                      "failure": [_op(o) for o in failure or []]})
        return TxnResult(bool(r.get("succeeded")), _int(r.get("header", {}), "revision"), r.get("responses") or [])

    def create(self, key: str, value: bytes, lease: int = 0) -> bool:
        """Put `key` only if it does not exist."""
        return self.txn([Compare(key, "CREATE", 0)], [Put(key, value, lease)]).succeeded

    def cas(self, key: str, expect_mod_revision: int, value: bytes, lease: int = 0) -> bool:
        """Put `key` only if its mod_revision is `expect_mod_revision` (0: it must not exist)."""
        return self.txn([Compare(key, "MOD", expect_mod_revision)], [Put(key, value, lease)]).succeeded

    def close(self) -> None:
        self._http.clear()
