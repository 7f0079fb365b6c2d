"""Who may talk to a node: CurveZMQ keys, roles and the ZAP gatekeeper.

- `keys`: certificates in pyzmq/CZMQ format under `<cluster>/keys/`, one
  folder per role, and the allow-list read from them;
- `policy`: which role may send which op (pure);
- `zap`: the node's ZAP authenticator (pyzmq's `zmq.auth`) and the
  socket options for servers and clients.

docs/security.md is the operator's guide.
"""
