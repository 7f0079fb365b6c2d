"""A real failing disk for tests: ext4 on a loop device whose backing file
sits on a size-limited tmpfs.

The backing file is sparse and larger than the tmpfs, so once the tmpfs is
full every write of a new block fails in the block layer. The kernel then
behaves as it does on a dying disk: writeback fails, `fdatasync` returns
ENOSPC or EIO once, the failed pages stay in the page cache marked clean
(they still read back as the written bytes), and a second fsync succeeds.
That is PostgreSQL's "fsyncgate", for real, not simulated.

Found while building this (kernel 6.18): the loop driver completes a
*short* write to its backing file as a success. When the tmpfs fills in the
middle of a multi-page write, the first pages land, the rest are dropped,
and the write and the fsync after it both report success. So this disk
also lies, like a drive that acknowledges a cache flush it did not do: the
last batch fsynced before the first reported failure can be partly lost.
No single node can keep what its disk drops silently; the tests check that
recovery notices (the lost tail is cut and noted as damage) and that with
K >= 1 the cluster keeps every acknowledged write.

The file system has no journal, so it stays writable after the failure
(with a journal, ext4 aborts it and remounts read-only, which hides the
page-cache danger behind EROFS). `grow()` gives the tmpfs room again, and
`remount()` unmounts and mounts afresh, which empties the page cache: what
reads back then is what the disk really holds.

Needs root, `losetup`, `mkfs.ext4` and free loop devices; `FailingDisk.make`
raises FaultUnavailable with the reason when any is missing.
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess

from daemon.failover.faults import FaultUnavailable


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True)


class FailingDisk:
    def __init__(self, base: str, mountpoint: str, backing_mib: int, image_mib: int) -> None:
        self.base = base
        self.tmpfs = os.path.join(base, "backing")
        self.image = os.path.join(self.tmpfs, "disk.img")
        self.mountpoint = mountpoint
        self.backing_mib = backing_mib
        self.image_mib = image_mib
        self.loop: str | None = None
        self.mounted = False
        self.tmpfs_mounted = False

    @classmethod
    def make(cls, base: str, mountpoint: str, backing_mib: int = 8, image_mib: int = 96) -> "FailingDisk":
        """Build it, or raise FaultUnavailable saying why it cannot be built here."""
        if os.geteuid() != 0:
            raise FaultUnavailable("a failing disk needs root (loop devices and mounts); run as root")
        for tool in ("losetup", "mkfs.ext4", "mount", "umount"):
            if shutil.which(tool) is None:
                raise FaultUnavailable(f"{tool} is not installed (apt-get install util-linux e2fsprogs)")
        d = cls(base, mountpoint, backing_mib, image_mib)
        try:
            d._build()
        except _Unavailable as e:
            d.destroy()
            raise FaultUnavailable(f"cannot build a failing disk here: {e}") from None
        return d

    def _build(self) -> None:
        os.makedirs(self.tmpfs, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        r = _run("mount", "-t", "tmpfs", "-o", f"size={self.backing_mib}m", "tmpfs", self.tmpfs)
        if r.returncode:
            raise _Unavailable(f"mount tmpfs: {r.stderr.strip()}")
        self.tmpfs_mounted = True
        with open(self.image, "wb") as f:
            f.truncate(self.image_mib << 20)
        r = _run("mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-E", "nodiscard", self.image)
        if r.returncode:
            raise _Unavailable(f"mkfs.ext4: {r.stderr.strip()}")
        r = _run("losetup", "--find", "--show", self.image)
        if r.returncode:
            raise _Unavailable(f"losetup: {r.stderr.strip() or 'no free loop device'}")
        self.loop = r.stdout.strip()
        self.mount()

    def mount(self) -> None:
        assert self.loop is not None
        r = _run("mount", "-t", "ext4", "-o", "errors=continue", self.loop, self.mountpoint)
        if r.returncode:
            raise _Unavailable(f"mount {self.loop}: {r.stderr.strip()}")
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            r = _run("umount", self.mountpoint)
            if r.returncode:
                r = _run("umount", "-l", self.mountpoint)
            self.mounted = False

    def used_mib(self) -> float:
        st = os.statvfs(self.tmpfs)
        return (st.f_blocks - st.f_bfree) * st.f_frsize / (1 << 20)

    def full(self) -> bool:
        st = os.statvfs(self.tmpfs)
        return st.f_bavail == 0

    def grow(self, mib: int | None = None) -> None:
        """Give the backing tmpfs room again: the 'disk' works from now on."""
        self.resize_kib((mib or self.image_mib + 16) * 1024)

    def fail_after(self, kib: int) -> None:
        """Let about `kib` more KiB reach the disk, then make writes fail."""
        st = os.statvfs(self.tmpfs)
        used_kib = (st.f_blocks - st.f_bfree) * st.f_frsize // 1024
        self.resize_kib(used_kib + kib)

    def resize_kib(self, kib: int) -> None:
        r = _run("mount", "-o", f"remount,size={kib}k", self.tmpfs)
        if r.returncode:
            raise FaultUnavailable(f"cannot resize the tmpfs under the failing disk: {r.stderr.strip()}")

    def remount(self) -> None:
        """Unmount and mount afresh: the page cache is gone, the disk speaks."""
        self.umount()
        # Drop the loop device's own cached blocks too, so the mount reads
        # what the backing file holds.
        assert self.loop is not None
        _run("blockdev", "--flushbufs", self.loop)
        self.mount()

    def destroy(self) -> None:
        self.umount()
        if self.loop:
            _run("losetup", "-d", self.loop)
            self.loop = None
        if self.tmpfs_mounted:
            _run("umount", "-l", self.tmpfs)
            self.tmpfs_mounted = False


class _Unavailable(Exception):
    pass


def read_direct(path: str) -> bytes:
    """The file as the disk holds it: O_DIRECT reads bypass the page cache
    (without dropping it, so a node restarted afterwards still finds the
    cache as the failure left it)."""
    size = os.path.getsize(path)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        out = bytearray()
        buf = mmap.mmap(-1, 1 << 20)  # page-aligned, as O_DIRECT needs
        pos = 0
        while pos < size:
            n = os.preadv(fd, [buf], pos)
            if n <= 0:
                break
            out += buf[:n]
            pos += n
        return bytes(out[:size])
    finally:
        os.close(fd)
