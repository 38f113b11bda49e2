"""Linux confinement of one graded exercise: namespaces, a read-only host, a uid slot, a cgroup, limits.

What each piece guarantees, and what it needs:

- **Namespaces** (root): a private mount namespace in which every host mount is read-only, ``/tmp``,
  ``/var/tmp``, ``/dev/shm`` (and ``/run/lock``) are fresh, the project's source tree (references,
  ``solutions/``, chapters), the other submissions and the forbidden libraries' files are hidden; an
  empty network namespace; a private IPC namespace (SysV IPC, POSIX message queues); a PID namespace
  whose init is the graded process, so its whole process tree ends with it and it sees no other
  process (a fresh ``/proc``).
- **A uid slot** (root): each running child gets a uid of its own, taken from a range with a lock
  file per uid (``flock``), so two graders on one machine never share a uid and never signal each
  other's children. Locks die with their holder: a crashed grader frees its slots.
- **A cgroup** (root, cgroup v2 ``memory.max`` or v1 ``memory.limit_in_bytes``): the memory limit holds
  for the exercise as a whole, all its processes together. Without one, ``RLIMIT_AS`` limits each
  process and ``RLIMIT_NPROC`` their number.
- **Resource limits** (always): address space, CPU seconds, file size, processes, open files, no core.
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import signal
import sys

__all__ = ["Isolation", "probe", "SlotPool", "MemoryCgroup", "enter_namespaces", "finish_pid_namespace",
           "fork_into_new_pid_namespace", "single_threaded",
           "drop_privileges", "set_limits", "die_with_parent", "needed_dirs"]

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWIPC, CLONE_NEWPID = 0x00020000, 0x40000000, 0x08000000, 0x20000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_DUMPABLE = 1, 38, 4
BASE_UID, N_UIDS = 61000, 2048
NPROC_LIMIT = 64
SLOT_DIR = "/run/course-lib-grader"
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                       flags, data.encode() if data else None), f"mount {target}")


def die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def not_dumpable() -> None:
    """Other processes of the same uid may not ptrace this one or read its memory."""
    _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


# --------------------------------------------------------------------------- what this machine allows
def probe() -> dict:
    """Which protections this machine allows (tried in a throw-away child)."""
    root = os.geteuid() == 0
    info = {"root": root, "namespaces": False, "pid_namespace": False, "uid_drop": root, "cgroup": None}
    if os.environ.get("COURSE_GRADER_ISOLATION", "").lower() == "off":   # what a normal user gets (tests)
        info["uid_drop"] = False
        return info
    if not root:
        return info
    pid = os.fork()
    if pid == 0:
        try:
            _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWPID), "unshare")
            inner = os.fork()
            if inner == 0:
                os._exit(0 if os.getpid() == 1 else 1)
            _, status = os.waitpid(inner, 0)
            os._exit(0 if os.waitstatus_to_exitcode(status) == 0 else 2)
        except BaseException:  # noqa: BLE001
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    info["namespaces"] = code in (0, 2)
    info["pid_namespace"] = code == 0
    info["cgroup"] = MemoryCgroup.kind()
    return info


Isolation = dict


# --------------------------------------------------------------------------- uid slots across graders
class SlotPool:
    """``n`` uids, each held by an exclusive ``flock`` on ``SLOT_DIR/<uid>`` for this process's life."""

    def __init__(self, n: int):
        os.makedirs(SLOT_DIR, mode=0o700, exist_ok=True)
        self._held: dict[int, int] = {}
        for uid in range(BASE_UID, BASE_UID + N_UIDS):
            if len(self._held) == n:
                break
            fd = os.open(os.path.join(SLOT_DIR, str(uid)), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
        if len(self._held) < n:
            raise RuntimeError(f"only {len(self._held)} free grader uids of {N_UIDS}: too many graders running")
        self.uids = sorted(self._held)

    def fds(self) -> list[int]:
        return list(self._held.values())


# --------------------------------------------------------------------------- memory for a whole exercise
class MemoryCgroup:
    """One memory cgroup per slot, under this process's own cgroup (v2 or v1 memory controller)."""

    def __init__(self, name: str):
        kind = self.kind()
        if kind is None:
            raise OSError("no writable memory cgroup")
        self.path = os.path.join(self._parent(kind), name)
        self.v2 = kind == "v2"
        os.makedirs(self.path, exist_ok=True)

    @staticmethod
    def _own(controller: str) -> str | None:
        with open("/proc/self/cgroup") as handle:
            for line in handle:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controller in controllers.split(","):
                    return path
        return None

    @classmethod
    def _parent(cls, kind: str) -> str:
        if kind == "v2":
            return "/sys/fs/cgroup" + (cls._own("") or "/")
        return "/sys/fs/cgroup/memory" + (cls._own("memory") or "/")

    @classmethod
    def kind(cls) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
                parent = cls._parent("v2")
                with open(os.path.join(parent, "cgroup.subtree_control")) as handle:
                    if "memory" in handle.read().split() and os.access(parent, os.W_OK):
                        return "v2"
            parent = cls._parent("v1")
            if os.path.exists(os.path.join(parent, "memory.limit_in_bytes")) and os.access(parent, os.W_OK):
                return "v1"
        except OSError:
            pass
        return None

    @classmethod
    def remove_stale(cls, prefix: str = "course-grader-") -> None:
        """Remove the slot cgroups of graders that died without cleaning up (their pid is gone)."""
        kind = cls.kind()
        if kind is None:
            return
        parent = cls._parent(kind)
        for name in os.listdir(parent):
            owner = name[len(prefix):].split("-")[0] if name.startswith(prefix) else ""
            if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
                try:
                    os.rmdir(os.path.join(parent, name))
                except OSError:
                    pass

    def _write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as handle:
            handle.write(value)

    def limit(self, nbytes: int) -> None:
        if self.v2:
            self._write("memory.max", str(nbytes))
            try:
                self._write("memory.swap.max", "0")
            except OSError:
                pass
        else:
            self._write("memory.limit_in_bytes", str(nbytes))
        self.mark()

    def mark(self) -> None:
        """Remember the limit-hit count, so :meth:`hit_limit` tells about the next job only."""
        self._oom_before = self.oom_kills()

    def join(self, pid: int = 0) -> None:
        self._write("cgroup.procs", str(pid or os.getpid()))

    def oom_kills(self) -> int:
        try:
            if self.v2:
                with open(os.path.join(self.path, "memory.events")) as handle:
                    return next((int(v) for k, v in (line.split() for line in handle) if k == "oom_kill"), 0)
            with open(os.path.join(self.path, "memory.failcnt")) as handle:
                return int(handle.read().strip() or 0)
        except OSError:
            return 0

    def hit_limit(self) -> bool:
        return self.oom_kills() > getattr(self, "_oom_before", 0)

    def kill_all(self) -> None:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as handle:
                for pid in handle.read().split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
        except OSError:
            pass

    def remove(self) -> None:
        import time
        for _ in range(100):               # killed processes leave the cgroup a moment later
            self.kill_all()
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


# --------------------------------------------------------------------------- the mount namespace
def needed_dirs(project_root: str) -> list[str]:
    """Directories the child must still read: the Python installation and its site-packages, even when
    they live inside the project (a ``.venv``); never the project's own source tree."""
    dirs = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and os.path.isdir(real) and not (real == project_root or real.startswith(project_root + os.sep)):
            dirs.add(real)
    return sorted(dirs)


def _outermost(paths: list[str]) -> list[str]:
    return [p for p in paths if not any(p != o and p.startswith(o + "/") for o in paths)]


def _overlay(target: str, options: str, keep: list[str], read_only: bool = False) -> None:
    """Mount an empty tmpfs on ``target``, then bind the ``keep`` subtrees back in place (held open
    with ``O_PATH`` before the tmpfs covers them)."""
    fds = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in _outermost(keep)]
    _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, options)
    for path, fd in fds:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)
    if read_only:
        _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _closed_ancestor(path: str) -> str | None:
    """The highest ancestor of ``path`` that others may not traverse (e.g. ``/root``, mode 700)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        ancestor = "/" + "/".join(parts[:i])
        if not os.stat(ancestor).st_mode & 0o001:
            return ancestor
    return None


def _mount_points() -> list[tuple[str, set[str]]]:
    points = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            points.append((target, set(fields[5].split(","))))
    return points


def _read_only_host() -> None:
    """Remount every mount of this (private) namespace read-only; the host is unaffected."""
    flag = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC}
    for target, options in sorted(_mount_points(), key=lambda p: p[0].count("/")):
        if target.startswith(("/proc", "/sys")) and target not in ("/sys", "/sys/fs/cgroup"):
            continue
        extra = sum(flag[o] for o in options if o in flag)
        try:
            _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | extra)
        except OSError:
            pass


def single_threaded() -> bool:
    return len(os.listdir("/proc/self/task")) == 1


def fork_into_new_pid_namespace() -> int:
    """``fork()`` whose child is the init (pid 1) of a new PID namespace: one ``clone`` system call with
    ``CLONE_NEWPID``, where ``unshare`` would need a second fork. Python's own before/after-fork
    hooks run as for ``os.fork``. Only for a single-threaded caller (no other thread can hold a lock)."""
    import platform
    import signal as _signal

    number = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
    if number is None:
        raise OSError("clone: unknown system call number on this machine")
    _libc.syscall.restype = ctypes.c_long
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc.syscall(ctypes.c_long(number), ctypes.c_ulong(CLONE_NEWPID | _signal.SIGCHLD),
                        ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_ulong(0))
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
    else:
        ctypes.pythonapi.PyOS_AfterFork_Parent()
        if pid < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def enter_namespaces(hide: list[str], project_root: str, file_size_mb: int, new_pid_namespace: bool = True) -> None:
    """Private mount, network and IPC namespaces, and (``new_pid_namespace``) a PID namespace for the
    next fork."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | (CLONE_NEWPID if new_pid_namespace else 0)),
           "unshare")
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    needed = needed_dirs(project_root)
    _read_only_host()
    closed: dict[str, list[str]] = {}
    for path in needed:
        ancestor = _closed_ancestor(path)
        if ancestor:
            closed.setdefault(ancestor, []).append(path)
    for ancestor, keep in closed.items():
        _overlay(ancestor, "mode=755,size=1m", keep, read_only=True)
    fresh = set()
    for tmp in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"):
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            fresh.add(os.path.realpath(tmp))
            _overlay(tmp, f"mode=1777,size={4 * file_size_mb}m",
                     [p for p in needed if p.startswith(os.path.realpath(tmp) + "/")])
    if os.path.isdir(project_root):
        _overlay(project_root, "mode=755,size=4k",
                 [p for p in needed if p.startswith(project_root + "/")], read_only=True)
    for path in hide:
        if os.path.realpath(path) in fresh:       # already an empty, fresh directory here
            continue
        try:
            if os.path.isdir(path):
                _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_RDONLY, "mode=755,size=4k")
            elif os.path.exists(path):
                _mount("/dev/null", path, None, _MS_BIND)
        except OSError:
            pass


def finish_pid_namespace() -> None:
    """In the PID namespace's init: a ``/proc`` that shows only this namespace."""
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)


def drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # no setuid binary can give privileges back


def set_limits(memory_mb: int, cpu_s: float, file_size_mb: int, own_uid: bool) -> None:
    import resource

    with open("/proc/self/status") as status:
        vm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    nproc = NPROC_LIMIT if own_uid else _count_own_processes() + NPROC_LIMIT
    for limit, value in ((resource.RLIMIT_AS, vm + memory_mb * 2**20), (resource.RLIMIT_CPU, int(cpu_s) + 1),
                         (resource.RLIMIT_FSIZE, file_size_mb * 2**20), (resource.RLIMIT_NPROC, nproc),
                         (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))


def _count_own_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def live_processes(uid: int) -> list[int]:
    """Processes of ``uid`` that are not zombies."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    with open(f"/proc/{entry}/stat") as stat:
                        if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(entry))
            except (OSError, IndexError):
                pass
    return found


def reap_uid(uid: int) -> None:
    """Kill every process of ``uid`` (used only where no PID namespace confines the tree)."""
    for _ in range(20):
        pid = os.fork()
        if pid == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        if not live_processes(uid):
            return
