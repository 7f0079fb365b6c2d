"""The node's gate: CurveZMQ on its server sockets, pyzmq's ZAP authenticator
deciding which keys get a session, and the role of each message's sender.

Invariants:
- with security = "curve", every server socket is a CURVE server with the
  node's own secret key, so only peers that know its public key (from the
  cluster file) can talk to it, and every byte is encrypted and
  authenticated;
- a key not in the allow-list gets no session (ZAP denies it; logged as
  `event=auth_denied`, at most once per key per minute);
- the allow-list is re-read on SIGHUP; a message whose sender's key is no
  longer in it is dropped unanswered, so a revoked key's open connections
  stop working at once;
- the replication socket admits node keys only, and the client socket
  admits a client key only while fewer than `max_clients` connections are
  open on it (counted from the socket's monitor): a crowd of clients cannot
  take the descriptors that peers, admins and the log need.
"""

from __future__ import annotations

import threading
import time

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import parse_monitor_message

from daemon.auth.keys import Identity, KeyError_, load_registry, load_secret
from daemon.ops import logs

DOMAIN = "zwal"  # the client socket's ZAP domain
REPL_DOMAIN = "zwal-repl"  # the replication socket's: node keys only
DENY_LOG_EVERY_S = 60.0  # per key
DENY_LOG_BURST = 20  # lines per minute, all keys together (a key per connection must not flood the log)
HANDSHAKE_S = 5.0  # a connection that has not finished its CURVE handshake by then is dropped


class Gate:
    def __init__(self, ctx: zmq.Context, keys_dir: str, secret_file: str, me: str | None = None) -> None:
        self.ctx = ctx
        self.keys_dir = keys_dir
        self.me = me
        self.public, self.secret = load_secret(secret_file)
        self._registry: dict[str, Identity] = load_registry(keys_dir)
        self._check(self._registry)
        self._lock = threading.Lock()
        self._denied_at: dict[bytes, float] = {}
        self._window = (0.0, 0)  # (minute start, lines logged in it)
        self._suppressed = 0
        self.denied = 0
        self.auth: ThreadAuthenticator | None = None
        self.max_clients = 0  # 0: no cap
        self.capped = 0  # client connections refused at the cap
        self._cap_log = logs.Limited(burst=20)
        self._monitor: zmq.Socket | None = None
        self._open = 0  # connections open on the client socket

    # -- ZAP (runs on the authenticator's thread) ---------------------------------------------

    def callback(self, domain: str, key: bytes) -> bool:
        with self._lock:
            who = self._registry.get(key.decode("ascii", "replace"))
        if who is not None and domain == REPL_DOMAIN and who.role != "node":
            # Only nodes replicate: another key would hold a descriptor for nothing.
            self._cap_log.warn("auth_denied", key=str(who), reason="only node keys may use the replication endpoint")
            return False
        if who is not None and who.role == "client" and self.max_clients:
            n = self.open_connections()
            if n > self.max_clients:
                self.capped += 1
                self._cap_log.warn("connection_limit", key=str(who), open=n, max_client_connections=self.max_clients,
                                   refused_total=self.capped,
                                   action="refusing new client connections until some close (admins and nodes "
                                   "still get in)")
                return False
        ok = who is not None
        if not ok:
            self.denied += 1
            now = time.monotonic()
            start, n = self._window  # lines logged in the current minute
            if now - start >= 60.0:
                if self._suppressed:
                    logs.warn("auth_denied_summary", suppressed=self._suppressed, denied_total=self.denied)
                    self._suppressed = 0
                start, n = now, 0
            if now - self._denied_at.get(key, -1e9) >= DENY_LOG_EVERY_S:
                if n < DENY_LOG_BURST:
                    if len(self._denied_at) > 10000:
                        self._denied_at.clear()  # bounded, whatever a flood of fresh keys does
                    self._denied_at[key] = now
                    logs.warn("auth_denied", key=key.decode("ascii", "replace"), reason="unknown key",
                              denied_total=self.denied)
                    n += 1
                else:
                    self._suppressed += 1
            self._window = (start, n)
        return ok

    def alive(self) -> bool:
        """Is the ZAP handler running? Without it no handshake can complete
        (ZAP_ENFORCE_DOMAIN), so the node must restart rather than linger."""
        return self.auth is not None and self.auth.is_alive()

    def start(self) -> None:
        self.auth = ThreadAuthenticator(self.ctx)
        self.auth.start()
        self.auth.configure_curve_callback(domain=DOMAIN, credentials_provider=self)
        self.auth.configure_curve_callback(domain=REPL_DOMAIN, credentials_provider=self)

    # -- counting connections (from the client socket's monitor) ------------------------------

    def watch(self, sock: zmq.Socket, max_clients: int) -> None:
        """Count the connections open on `sock` (the client socket) and cap client keys at `max_clients`."""
        self.max_clients = max_clients
        self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
        self._monitor.setsockopt(zmq.RCVHWM, 0)

    def open_connections(self) -> int:
        """Connections open on the client socket now (either thread may ask; the monitor is read under the lock)."""
        with self._lock:
            m = self._monitor
            if m is None:
                return 0
            while True:
                try:
                    ev = parse_monitor_message(m.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
                except zmq.ZMQError:
                    break  # the socket is closing
                if ev["event"] == zmq.EVENT_ACCEPTED:
                    self._open += 1
                elif ev["event"] == zmq.EVENT_DISCONNECTED:
                    self._open = max(0, self._open - 1)
            return self._open

    def stop(self) -> None:
        with self._lock:
            if self._monitor is not None:
                self._monitor.close(linger=0)
                self._monitor = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None

    # -- the allow-list -----------------------------------------------------------------------

    def _check(self, reg: dict[str, Identity]) -> None:
        """Refuse an allow-list that would cut this cluster off from itself."""
        mine = self.public.decode("ascii")
        if mine not in reg or reg[mine].role != "node":
            raise KeyError_(f"{self.keys_dir}: this node's own public key is not among keys/nodes/*.key")
        if self.me is not None and reg[mine].name != self.me:
            raise KeyError_(f"{self.keys_dir}: this node's secret key is {reg[mine].name}'s, not {self.me}'s")

    def reload(self) -> int:
        """Re-read the allow-list (SIGHUP). On any error the old list stays."""
        try:
            reg = load_registry(self.keys_dir)
            self._check(reg)
        except KeyError_ as e:
            logs.error("keys_reload_refused", reason=str(e), action="keeping the previous allow-list")
            return -1
        with self._lock:
            gone = set(self._registry) - set(reg)
            self._registry = reg
        logs.event("keys_reloaded", keys=len(reg), revoked=len(gone), keys_dir=self.keys_dir)
        return len(reg)

    def node_names(self) -> set[str]:
        """Nodes whose keys are in the allow-list now."""
        with self._lock:
            return {i.name for i in self._registry.values() if i.role == "node"}

    def who(self, user_id: str | None) -> Identity | None:
        """The sender of a message, by the User-Id ZAP gave its connection."""
        if user_id is None:
            return None
        with self._lock:
            return self._registry.get(user_id)

    # -- sockets ------------------------------------------------------------------------------

    def serve(self, sock: zmq.Socket, domain: str = DOMAIN) -> None:
        """Make `sock` (before bind) a CURVE server that asks this gate."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        sock.zap_domain = domain.encode()
        # Without a ZAP handler libzmq would let any key in: refuse instead.
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(HANDSHAKE_S * 1000))


def as_client(sock: zmq.Socket, public: bytes, secret: bytes, server_public: str | bytes) -> None:
    """Make `sock` (before connect) a CURVE client of the server with that public key."""
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = server_public.encode("ascii") if isinstance(server_public, str) else server_public
