"""Run a command under the socket and system-call limits of a systemd unit,
without systemd: a seccomp filter (libseccomp, through ctypes) built from the
unit's RestrictAddressFamilies= and SystemCallFilter= lines.

    python seccomp_exec.py UNIT_FILE -- COMMAND [ARGS...]

- RestrictAddressFamilies=A B ...: socket() with any other family fails
  EAFNOSUPPORT, as under systemd.
- SystemCallFilter=@set ... / ~@set ...: the allow-list minus the deny-list
  (sets expanded with `systemd-analyze syscall-filter`); any other system call
  fails with SystemCallErrorNumber= (EPERM) — systemd would do the same with
  that setting.

Used by tests/test_systemd_unit.py to start a real node under the unit's limits.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4


def SCMP_ACT_ERRNO(e: int) -> int:
    return 0x00050000 | (e & 0xFFFF)


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def unit_settings(path: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in open(path):
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")) or "=" not in line:
            continue
        k, v = line.split("=", 1)
        out.setdefault(k.strip(), []).append(v.strip())
    return out


def expand(names: list[str], seen: set[str] | None = None) -> set[str]:
    """System call names of `@set`s (recursively) and plain names."""
    seen = set() if seen is None else seen
    calls: set[str] = set()
    for n in names:
        if not n.startswith("@"):
            calls.add(n)
            continue
        if n in seen:
            continue
        seen.add(n)
        text = subprocess.run(["systemd-analyze", "syscall-filter", n], capture_output=True, text=True,
                              check=True).stdout
        members = [ln.strip() for ln in text.splitlines()[1:] if ln.strip() and not ln.strip().startswith("#")]
        calls |= expand(members, seen)
    return calls


def family_number(name: str) -> int:
    return int(getattr(socket, name))


def main() -> int:
    unit, sep, cmd = sys.argv[1], sys.argv[2], sys.argv[3:]
    assert sep == "--" and cmd, __doc__
    s = unit_settings(unit)
    allow: set[str] = set()
    deny: set[str] = set()
    for v in s.get("SystemCallFilter", []):
        if v.startswith("~"):
            deny |= expand(v[1:].split())
        else:
            allow |= expand(v.split())
    families = {family_number(f) for v in s.get("RestrictAddressFamilies", []) for f in v.split()}
    err = getattr(errno, (s.get("SystemCallErrorNumber") or ["EPERM"])[-1])

    lib = ctypes.CDLL("libseccomp.so.2")
    lib.seccomp_init.restype = ctypes.c_void_p
    default = SCMP_ACT_ERRNO(err) if allow else SCMP_ACT_ALLOW
    ctx = ctypes.c_void_p(lib.seccomp_init(ctypes.c_uint32(default)))
    assert ctx.value, "seccomp_init failed"
    if allow:
        for name in sorted(allow - deny - ({"socket"} if families else set())):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a system call of this architecture
                continue
            rc = lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(SCMP_ACT_ALLOW), nr, 0, None)
            assert rc == 0, (name, rc)
    else:
        for name in sorted(deny):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr >= 0:
                assert lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(SCMP_ACT_ERRNO(err)), nr, 0, None) == 0
    if families:
        nr = lib.seccomp_syscall_resolve_name(b"socket")
        for fam in range(0, 64):  # every family the kernel knows (AF_MAX is 46 today)
            ok = fam in families and (not allow or "socket" in allow - deny)
            action = SCMP_ACT_ALLOW if ok else SCMP_ACT_ERRNO(errno.EAFNOSUPPORT)
            arr = (_Cmp * 1)(_Cmp(0, SCMP_CMP_EQ, fam, 0))
            rc = lib.seccomp_rule_add_array(ctx, ctypes.c_uint32(action), nr, 1, arr)
            assert rc == 0, (fam, rc)
    assert lib.seccomp_load(ctx) == 0, "seccomp_load failed"
    os.execvp(cmd[0], cmd)
    return 127


if __name__ == "__main__":
    sys.exit(main())
