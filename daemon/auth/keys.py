"""Certificates: where they live, how they are made, who they belong to.

Layout under the cluster's keys directory (`keys_dir`, default `keys/`
beside the cluster file):

    keys/nodes/<node>.key      keys/nodes/<node>.key_secret
    keys/clients/<name>.key    keys/clients/<name>.key_secret
    keys/admins/<name>.key     keys/admins/<name>.key_secret

Each pair is made by `zmq.auth.create_certificates` (the CZMQ text format).
`*.key` holds the public key only and may be copied anywhere; `*.key_secret`
holds both and is mode 0600. The allow-list of a node is every `*.key` in
the three folders; the folder gives the role. Revoking a key = deleting (or
moving away) its `.key` file, then SIGHUP to the nodes.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import zmq.auth

FOLDERS = {"node": "nodes", "client": "clients", "admin": "admins"}


class KeyError_(Exception):
    """A certificate is missing or unreadable; the message says which and what to do."""


@dataclass(frozen=True)
class Identity:
    name: str
    role: str
    public: str  # Z85, 40 characters

    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


def folder(keys_dir: str, role: str) -> str:
    return os.path.join(keys_dir, FOLDERS[role])


def secret_path(keys_dir: str, role: str, name: str) -> str:
    return os.path.join(folder(keys_dir, role), f"{name}.key_secret")


def create(keys_dir: str, role: str, name: str) -> Identity:
    """Make a new certificate; refuses to overwrite one."""
    if role not in FOLDERS:
        raise KeyError_(f"unknown role {role!r} (roles: {', '.join(FOLDERS)})")
    if not name or "/" in name or name.startswith("."):
        raise KeyError_(f"bad key name {name!r}: use letters, digits, '-' or '_'")
    d = folder(keys_dir, role)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    os.chmod(d, 0o700)
    for p in (os.path.join(d, f"{name}.key"), os.path.join(d, f"{name}.key_secret")):
        if os.path.exists(p):
            raise KeyError_(f"{p} already exists: refusing to replace a key (revoke it first by removing it)")
    old_umask = os.umask(0o077)  # the secret is 0600 from its first byte, not after a chmod
    try:
        pub_file, sec_file = zmq.auth.create_certificates(d, name, metadata={"role": role, "cluster-key": name})
    finally:
        os.umask(old_umask)
    os.chmod(sec_file, 0o600)
    os.chmod(pub_file, 0o644)
    public, _ = zmq.auth.load_certificate(pub_file)
    return Identity(name, role, public.decode("ascii"))


def load_secret(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a `.key_secret` file; refuses one others may read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise KeyError_(f"cannot read the certificate {path}: {e.strerror}") from None
    if mode & 0o077:
        raise KeyError_(f"{path} is readable or writable by others (mode {mode & 0o777:o}): "
                        f"run 'chmod 600 {path}' (and consider the key compromised if others could read it)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyError_(f"cannot read the certificate {path}: {e}") from None
    if secret is None:
        raise KeyError_(f"{path} holds no secret key (it is a public .key file; use the .key_secret one)")
    return public, secret


def load_registry(keys_dir: str) -> dict[str, Identity]:
    """Every public key allowed in, by its Z85 text. Raises KeyError_ when a
    folder cannot be read (a missing folder is empty, not an error)."""
    out: dict[str, Identity] = {}
    for role in FOLDERS:
        d = folder(keys_dir, role)
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except OSError as e:
            raise KeyError_(f"cannot read the key folder {d}: {e.strerror or e}") from None
        st = os.stat(d)
        if st.st_mode & 0o022:
            raise KeyError_(f"{d} is writable by others (mode {st.st_mode & 0o777:o}): anyone could add a "
                            f"{role} key; run 'chmod 700 {d}'")
        for fn in names:
            if not fn.endswith(".key"):
                continue
            path = os.path.join(d, fn)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022:
                raise KeyError_(f"{path} is a symlink or writable by others: anyone could swap in their own "
                                f"key with the {role} role; make it a plain file with 'chmod 644'")
            try:
                public, _ = zmq.auth.load_certificate(path)
            except (OSError, ValueError):
                continue  # a half-copied file: skip it, never crash the gate
            out[public.decode("ascii")] = Identity(fn[: -len(".key")], role, public.decode("ascii"))
    return out


def public_of(keys_dir: str, role: str, name: str) -> str:
    path = os.path.join(folder(keys_dir, role), f"{name}.key")
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:
        raise KeyError_(f"cannot read {path}: {e}") from None
    return public.decode("ascii")
