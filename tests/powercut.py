"""A power cut for the crash tests (issue 15): a FUSE file system that forgets what
was never made durable, in the style of LazyFS (INESC TEC).

``kill -9`` keeps the kernel's page cache, so it cannot show a missing fsync. This
file system passes every call through to a backing directory (what the processes on
the mount see: the page cache) and, beside it, keeps what a disk would hold after a
power cut, under the conservative POSIX model:

* a file's data (writes, truncations) reaches the disk at ``fsync``/``fdatasync`` of
  that file; its mode (``chmod``) and modification time at ``fsync`` only (they are
  not needed to read the data; a file never fsync'ed gets the cut's time);
* a name made or removed in a directory (create, mkdir, link, symlink, rename, unlink,
  rmdir) reaches the disk at ``fsync`` of that directory, not at the file's fsync
  (fsync(2): "an explicit fsync() on a file descriptor for the directory is also
  needed"). Each directory's changes reach the disk in the order they were made; a
  rename is one change of both directories (atomic), so a directory's fsync also
  commits the earlier changes of any directory a rename links it to.

:meth:`PowerCutFS.cut` freezes the file system (every later call fails with ``EIO``)
and writes the disk as it would be found after the cut into a new directory, which a
restarted lab then opens. ``seed=None`` keeps only what was made durable; a seed also
lets part of what was pending reach the disk, as a page cache flushing on its own
would have: the directory changes up to a random point (in order, as a journal
commits them), each pending mode change or not, and for each file a random prefix
of its pending writes (the last one possibly torn); the seed is printed with every
failure, so the state reproduces.

A cut can also be a look (``freeze=False``): what a cut right now would leave, the
file system going on as if there had been none.

Run as a script it mounts ``BACKING`` on ``MOUNT`` and reads commands on stdin
(``cut OUT [SEED]``, ``look OUT [SEED]``), answering each on stdout (JSON: the seed,
the pending changes and the fsyncs so far); the tests use :class:`Mount`.
``POWERCUT_TRACE=1`` prints every call on stderr.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

__all__ = ["Mount", "PowerCutFS", "fuse_works"]

_Op = tuple[tuple[int, ...], tuple[tuple, ...]]  # (directories touched, ((set|del), dir, name[, node]) ...)


class PowerCutFS:
    """The pass-through file system with its model of the disk (see the module)."""

    use_ns = True

    def __init__(self, backing: str) -> None:
        self._root = os.path.realpath(backing)
        self._lock = threading.Lock()
        self._frozen = False
        self._ids: dict[int, int] = {}  # backing inode number -> node
        self._next = 0
        self._kind: dict[int, str] = {}  # node -> "f", "d" or "l"
        self._data: dict[int, bytes] = {}  # node -> its data on the disk (a symlink's target)
        self._mode: dict[int, int] = {}  # node -> its permission bits on the disk
        # node -> its modification time on the disk (ns), at its fsync: the store keeps a
        # message's INTERNALDATE there (utime before the fsync), and a MOVE cut short
        # compares it to find the original's copy
        self._mtime: dict[int, int] = {}
        self._entries: dict[int, dict[str, int]] = {}  # directory node -> its names on the disk
        self._writes: dict[int, list[tuple]] = {}  # node -> ("w", offset, bytes) | ("t", length), pending
        self._chmods: dict[int, int] = {}  # node -> pending mode
        self._ops: list[_Op] = []  # pending directory changes, in order
        self._syncs = {"fsync": 0, "fsyncdir": 0}
        self._root_node = self._scan(self._root)

    # -- the model ----------------------------------------------------------------------

    def _new(self, ino: int, kind: str, mode: int) -> int:
        self._next += 1
        node = self._next
        self._ids[ino] = node
        self._kind[node] = kind
        self._mode[node] = mode & 0o7777
        if kind == "d":
            self._entries[node] = {}
        return node

    def _scan(self, path: str) -> int:
        """What is there at mount time is on the disk."""
        st = os.lstat(path)
        if st.st_ino in self._ids:  # a second hard link
            return self._ids[st.st_ino]
        if stat.S_ISDIR(st.st_mode):
            node = self._new(st.st_ino, "d", st.st_mode)
            for name in os.listdir(path):
                self._entries[node][name] = self._scan(os.path.join(path, name))
        elif stat.S_ISLNK(st.st_mode):
            node = self._new(st.st_ino, "l", st.st_mode)
            self._data[node] = os.readlink(path).encode()
        else:
            node = self._new(st.st_ino, "f", st.st_mode)
            with open(path, "rb") as f:
                self._data[node] = f.read()
            self._mtime[node] = st.st_mtime_ns
        return node

    def _node(self, path: str, fh: int | None = None) -> int:
        st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        node = self._ids.get(st.st_ino)
        if node is None:  # made behind our back (cannot happen through the mount)
            node = self._new(st.st_ino, "d" if stat.S_ISDIR(st.st_mode) else "f", st.st_mode)
        return node

    def _full(self, path: str) -> str:
        return self._root + path

    def _parent(self, path: str) -> tuple[int, str]:
        head, name = path.rsplit("/", 1)
        return self._node(head or "/"), name

    def _commit_dir(self, node: int) -> None:
        """fsync of a directory: its pending changes, and those they depend on."""
        dirs, keep, done = {node}, [], []
        for op in reversed(self._ops):  # latest first: a change needs every earlier one of its directories
            if dirs.intersection(op[0]):
                dirs.update(op[0])
                done.append(op)
            else:
                keep.append(op)
        for op in reversed(done):
            self._apply(op)
        self._ops = keep[::-1]

    def _apply(self, op: _Op) -> None:
        for action in op[1]:
            names = self._entries.setdefault(action[1], {})
            if action[0] == "set":
                names[action[2]] = action[3]
            else:
                names.pop(action[2], None)

    def _commit_data(self, node: int, count: int | None = None, torn: int | None = None) -> None:
        pending = self._writes.pop(node, [])
        count = len(pending) if count is None else count
        buf = bytearray(self._data.get(node, b""))
        for i, w in enumerate(pending[:count + (torn is not None)]):
            if w[0] == "t":
                del buf[w[1]:]
                buf.extend(bytes(max(0, w[1] - len(buf))))
                continue
            chunk = w[2][:torn] if i == count else w[2]
            if len(buf) < w[1]:
                buf.extend(bytes(w[1] - len(buf)))
            buf[w[1]:w[1] + len(chunk)] = chunk
        self._data[node] = bytes(buf)

    def _change(self, dirs: tuple[int, ...], *actions: tuple) -> None:
        self._ops.append((dirs, actions))

    # -- the cut --------------------------------------------------------------------------

    def cut(self, out: str, seed: int | None = None, freeze: bool = True) -> dict:
        """Write the disk as a power cut now leaves it into ``out``; ``freeze``: the cut
        is real (every later call fails), else the file system goes on as if there had
        been none (a cut after each acknowledgement, checked while the lab runs)."""
        with self._lock:
            if freeze:
                self._frozen = True
                return self._cut(out, seed)
            saved = self._data, self._mode, self._entries, self._writes, self._chmods, self._ops, self._mtime
            self._data, self._mode, self._chmods = dict(self._data), dict(self._mode), dict(self._chmods)
            self._mtime = dict(self._mtime)
            self._entries = {node: dict(names) for node, names in self._entries.items()}
            self._writes = {node: list(w) for node, w in self._writes.items()}
            self._ops = list(self._ops)
            try:
                return self._cut(out, seed)
            finally:
                (self._data, self._mode, self._entries, self._writes, self._chmods, self._ops,
                 self._mtime) = saved

    def _cut(self, out: str, seed: int | None) -> dict:
        pending_ops, pending_writes = len(self._ops), sum(map(len, self._writes.values()))
        if seed is not None:
            rng = random.Random(seed)
            for node in list(self._writes):
                n = len(self._writes[node])
                count = rng.randint(0, n)
                torn = rng.randint(0, len(self._writes[node][count][2])) \
                    if count < n and self._writes[node][count][0] == "w" and rng.random() < 0.5 else None
                self._commit_data(node, count, torn)
            for node in list(self._chmods):
                if rng.random() < 0.5:
                    self._mode[node] = self._chmods.pop(node)
            # the directory changes as a journal commits them: the oldest first, up to a
            # random point (so no change is there without those made before it)
            reached = rng.randint(0, len(self._ops))
            for op in self._ops[:reached]:
                self._apply(op)
            self._ops = self._ops[reached:]  # lost
        os.makedirs(out)
        made: dict[int, str] = {}
        self._write(self._root_node, out, made)
        return {"seed": seed, "pending_ops": pending_ops, "pending_writes": pending_writes,
                "left_ops": len(self._ops), **self._syncs}

    def _write(self, node: int, path: str, made: dict[int, str]) -> None:
        for name, child in self._entries.get(node, {}).items():
            target = os.path.join(path, name)
            kind = self._kind[child]
            if child in made:
                if kind == "f":
                    os.link(made[child], target)
                continue  # a directory reached twice: keep the first
            made[child] = target
            if kind == "d":
                os.mkdir(target)
                self._write(child, target, made)
                os.chmod(target, self._mode[child])
            elif kind == "l":
                os.symlink(self._data[child].decode(), target)
            else:
                with open(target, "wb") as f:
                    f.write(self._data.get(child, b""))
                os.chmod(target, self._mode[child])
                if child in self._mtime:
                    os.utime(target, ns=(self._mtime[child], self._mtime[child]))

    # -- the file system (mfusepy's Operations) --------------------------------------------

    def __getattribute__(self, name: str):
        value = object.__getattribute__(self, name)
        if _TRACE and name in _CALLS:
            @functools.wraps(value)  # mfusepy reads create's signature
            def traced(*args, **kwargs):
                print(name, args[0] if args else "", file=sys.stderr, flush=True)
                return value(*args, **kwargs)
            return traced
        if name in _CALLS and object.__getattribute__(self, "_frozen"):
            def refused(*args, **kwargs):
                raise OSError(errno.EIO, "power cut")
            return refused
        return value

    def getattr(self, path, fh=None):
        st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        return {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_size", "st_uid", "st_gid",
                                            "st_atime_ns", "st_mtime_ns", "st_ctime_ns")} | {
            "st_atime": st.st_atime_ns, "st_mtime": st.st_mtime_ns, "st_ctime": st.st_ctime_ns}

    def readdir(self, path, fh):
        return [".", "..", *os.listdir(self._full(path))]

    def readlink(self, path):
        return os.readlink(self._full(path))

    def access(self, path, amode):
        if not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, "")
        return 0

    def statfs(self, path):
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                            "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def open(self, path, flags):
        with self._lock:
            fh = os.open(self._full(path), flags & ~os.O_CREAT)
            if flags & os.O_TRUNC:
                self._writes.setdefault(self._node(path, fh), []).append(("t", 0))
            return fh

    def create(self, path, mode, flags=os.O_WRONLY):
        with self._lock:
            parent, name = self._parent(path)
            fh = os.open(self._full(path), flags | os.O_CREAT, mode)
            node = self._new(os.fstat(fh).st_ino, "f", mode)
            self._change((parent,), ("set", parent, name, node))
            return fh

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        with self._lock:
            n = os.pwrite(fh, data, offset)
            self._writes.setdefault(self._node(path, fh), []).append(("w", offset, bytes(data[:n])))
            return n

    def truncate(self, path, length, fh=None):
        with self._lock:
            if fh is not None:
                os.ftruncate(fh, length)
            else:
                os.truncate(self._full(path), length)
            self._writes.setdefault(self._node(path, fh), []).append(("t", length))
            return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0

    def fsync(self, path, datasync, fh):
        with self._lock:
            node = self._node(path, fh)
            self._commit_data(node)
            if not datasync:  # the inode's metadata too: mode and times
                if node in self._chmods:
                    self._mode[node] = self._chmods.pop(node)
                self._mtime[node] = os.fstat(fh).st_mtime_ns
            self._syncs["fsync"] += 1
            return 0

    def opendir(self, path):
        return 0

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self._lock:
            self._commit_dir(self._node(path))
            self._syncs["fsyncdir"] += 1
            return 0

    def chmod(self, path, mode):
        with self._lock:
            os.chmod(self._full(path), mode)
            self._chmods[self._node(path)] = mode & 0o7777
            return 0

    def chown(self, path, uid, gid):
        os.chown(self._full(path), uid, gid)
        return 0

    def utimens(self, path, times=None):
        os.utime(self._full(path), ns=times)
        return 0

    def mkdir(self, path, mode):
        with self._lock:
            parent, name = self._parent(path)
            os.mkdir(self._full(path), mode)
            node = self._new(os.lstat(self._full(path)).st_ino, "d", mode)
            self._change((parent,), ("set", parent, name, node))
            return 0

    def symlink(self, target, source):
        with self._lock:
            parent, name = self._parent(target)
            os.symlink(source, self._full(target))
            node = self._new(os.lstat(self._full(target)).st_ino, "l", 0o777)
            self._data[node] = source.encode()  # a symlink's target is in its inode, made with it
            self._change((parent,), ("set", parent, name, node))
            return 0

    def link(self, target, source):
        with self._lock:
            parent, name = self._parent(target)
            node = self._node(source)
            os.link(self._full(source), self._full(target))
            self._change((parent,), ("set", parent, name, node))
            return 0

    def unlink(self, path):
        with self._lock:
            parent, name = self._parent(path)
            os.unlink(self._full(path))
            self._change((parent,), ("del", parent, name))
            return 0

    def rmdir(self, path):
        with self._lock:
            parent, name = self._parent(path)
            os.rmdir(self._full(path))
            self._change((parent,), ("del", parent, name))
            return 0

    def rename(self, old, new):
        with self._lock:
            src, old_name = self._parent(old)
            dst, new_name = self._parent(new)
            node = self._node(old)
            os.rename(self._full(old), self._full(new))
            self._change((src, dst), ("del", src, old_name), ("set", dst, new_name, node))
            return 0


# The calls a frozen file system refuses (getattr too: nothing may be read after the cut).
_CALLS = frozenset(name for name, value in vars(PowerCutFS).items()
                   if callable(value) and not name.startswith("_") and name != "cut")


_TRACE = os.environ.get("POWERCUT_TRACE") == "1"  # every call on stderr (debugging a test)


def fuse_works() -> str | None:
    """Why this machine cannot mount a FUSE file system (None: it can). mfusepy and
    fusermount3 missing are set-up errors (scripts/test installs them), not reasons."""
    import mfusepy  # noqa: F401  (loads libfuse: an ImportError or OSError here is a set-up error)

    assert shutil.which("fusermount3"), "fusermount3 is missing: scripts/test installs fuse3"
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse (a container without the device)"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            Mount(Path(tmp) / "backing", Path(tmp) / "mnt").close()
        except RuntimeError as exc:
            return str(exc)  # no right to mount (a container without CAP_SYS_ADMIN)
    return None


class Mount:
    """A :class:`PowerCutFS` of ``backing`` on ``mountpoint``, in its own process."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.mountpoint = mountpoint
        backing.mkdir(parents=True, exist_ok=True)
        mountpoint.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, __file__, str(backing), str(mountpoint)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while not os.path.ismount(mountpoint):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"the FUSE file system did not mount (exit {self.proc.returncode})")
            time.sleep(0.02)

    def cut(self, out: Path, seed: int | None = None, freeze: bool = True) -> dict:
        """The power cut: the disk as it is now into ``out`` (``freeze``: nothing more
        gets there, every later call fails; else a look at what a cut now would leave)."""
        self.proc.stdin.write(f"{'cut' if freeze else 'look'} {out} {'' if seed is None else seed}\n")
        self.proc.stdin.flush()
        reply = self.proc.stdout.readline()
        if not reply:
            raise RuntimeError("the FUSE file system died during the cut")
        return json.loads(reply)

    def close(self) -> None:
        # (not only when os.path.ismount: after a cut, its stat fails with EIO)
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, timeout=30,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _main(backing: str, mountpoint: str) -> None:
    import mfusepy

    fs = PowerCutFS(backing)

    def commands() -> None:
        for line in sys.stdin:
            words = line.split()
            if words and words[0] in ("cut", "look"):
                try:
                    answer = fs.cut(words[1], int(words[2]) if len(words) > 2 else None, words[0] == "cut")
                except Exception as exc:  # the test reads it
                    answer = {"error": repr(exc)}
                print(json.dumps(answer), flush=True)

    threading.Thread(target=commands, daemon=True).start()
    mfusepy.FUSE(fs, mountpoint, foreground=True, nothreads=False, fsname="powercut")


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
