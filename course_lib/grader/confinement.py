"""Linux confinement of one graded exercise: namespaces, a read-only host, a uid slot, a cgroup, limits.

What each piece guarantees, and what it needs:

- **Namespaces** (root): a private mount namespace whose root is built from an **allow-list**
  (:func:`child_root_plan`), read-only: the system's programs and libraries (``/usr/bin``, ``/usr/lib``,
  ``/usr/libexec``, ``/usr/include``, time zones), a few files of ``/etc`` (the loader's cache, the time
  zone; a ``passwd`` naming only the graders' uids), the interpreter, its standard library, the environment's
  site-packages (reached through the same symbolic links as on the host, even for a venv living under
  ``/tmp``), and the course's core modules and exercise specs; fresh ``/tmp``, ``/var/tmp``, ``/dev/shm``;
  ``/dev``'s harmless nodes. Nothing else of the host is there: no working directory or ``sys.path`` extra,
  no ``/home``, ``/root``, ``/srv``, no other copy of the course, no socket file, no reference module; the
  forbidden libraries' files are covered too. An empty network namespace (abstract unix sockets included);
  a private IPC namespace (SysV IPC, POSIX message queues); a PID namespace whose init is the graded
  process, so its whole process tree ends with it and it sees no other process (a fresh ``/proc``).
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
           "drop_privileges", "set_limits", "die_with_parent", "child_root_plan"]

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
    if info["namespaces"]:
        child_root_plan()                # computed once here, inherited by every forked child
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


# --------------------------------------------------------------------------- the child's root: an allow-list
# What of the host a graded child sees, besides its private tmp directories, /dev's harmless nodes and a fresh
# /proc: the system's programs and libraries (a compiler for torch.compile included), a few files of /etc, the
# interpreter, its standard library, the environment's site-packages, and the course's core modules.
SYSTEM_PATHS = ("/usr/bin", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32", "/usr/libexec", "/usr/include",
                "/usr/share/zoneinfo", "/bin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_PATHS = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "timezone")
DEVICES = ("null", "zero", "full", "random", "urandom")
FRESH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
# The course's own files a child may read (its lazy imports, its tracebacks): the core modules and the
# exercise specs. Never a chapter module (the references), never grading.py, solutions/, data/ or tests/.
COURSE_FILES = ("__init__.py", "data.py", "models.py", "checkpoints.py", "plots.py", "validation.py", "timing.py",
                "grader/__init__.py", "grader/codec.py", "grader/guards.py", "grader/confinement.py",
                "grader/zygote.py", "grader/exercises")
_SYS_pivot_root = {"x86_64": 155, "aarch64": 41}
_MNT_DETACH = 2


def _interpreter_paths() -> list[str]:
    """The interpreter (as it was started, and the file it resolves to), its shared library, its standard
    library and headers, the environment's ``pyvenv.cfg`` and site-packages: nothing else on ``sys.path``
    (no working directory, no ``PYTHONPATH`` entry, no user site-packages)."""
    import site
    import sysconfig

    paths = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    info = sysconfig.get_paths()
    paths += [info.get("stdlib"), info.get("platstdlib"), info.get("include")]
    libdir = sysconfig.get_config_var("LIBDIR")
    for name in (sysconfig.get_config_var("LDLIBRARY"), sysconfig.get_config_var("INSTSONAME")):
        if libdir and name and (".so" in name or name.endswith(".dylib")):
            paths.append(os.path.join(libdir, name))
    paths.append(os.path.join(sys.prefix, "pyvenv.cfg"))
    paths += site.getsitepackages()
    return [p for p in paths if p and os.path.exists(p)]


def _course_paths() -> list[str]:
    import course_lib
    package = os.path.dirname(os.path.abspath(course_lib.__file__))
    return [os.path.join(package, name) for name in COURSE_FILES if os.path.exists(os.path.join(package, name))]


def _walk(path: str, links: dict[str, str]) -> str:
    """Resolve ``path`` one component at a time, recording each symbolic link met on the way (so the new root
    can hold the same link); return the real path."""
    resolved, pending, hops = "/", [p for p in path.split("/") if p], 0
    while pending:
        name = pending.pop(0)
        if name == ".":
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        current = os.path.join(resolved, name)
        if os.path.islink(current):
            hops += 1
            if hops > 40:
                raise OSError(f"too many symbolic links: {path}")
            target = os.readlink(current)
            links[current] = target
            if target.startswith("/"):
                resolved = "/"
            pending = [p for p in target.split("/") if p] + pending
        else:
            resolved = current
    return resolved


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def child_root_plan() -> dict:
    """What the child's root holds, computed once in the zygote (where the host is visible): ``binds``
    (real paths, outermost only, each shown at the same place), ``links`` (each symbolic link on the way to
    them, recreated as it is: a venv symlinked under ``/tmp`` resolves as on the host), ``etc`` and ``devices``."""
    global _PLAN
    if _PLAN is not None:
        return _PLAN
    links: dict[str, str] = {}
    wanted = [p for p in SYSTEM_PATHS if os.path.lexists(p)] + _interpreter_paths() + _course_paths() + \
        [os.path.join("/etc", e) for e in ETC_PATHS if os.path.lexists(os.path.join("/etc", e))] + \
        ["/sys/devices/system/cpu"]
    real = []
    for path in wanted:
        try:
            target = _walk(path, links)
        except OSError:
            continue
        if os.path.exists(target) and not os.path.islink(target):
            real.append(target)
    binds = sorted({p for p in real if not any(o != p and _inside(p, o) for o in real)}, key=lambda p: p.count("/"))
    links = {link: target for link, target in links.items() if not any(_inside(link, b) for b in binds)}
    try:
        accounts = _account_files() if os.geteuid() == 0 else {}
    except OSError:
        accounts = {}
    _PLAN = {"binds": binds, "links": links, "files": accounts,
             "devices": [d for d in DEVICES if os.path.exists(f"/dev/{d}")]}
    return _PLAN


_PLAN: dict | None = None


def _mount_points() -> list[str]:
    """This namespace's mount points, outermost first."""
    with open("/proc/self/mountinfo") as handle:
        points = [line.split()[4].encode().decode("unicode_escape") for line in handle]
    return sorted(points, key=lambda p: p.count("/"))


def _prepare(root: str, path: str, is_dir: bool) -> str:
    """Create ``path`` (a directory, or an empty file to bind a file onto) under ``root``."""
    target = root + path
    os.makedirs(target if is_dir else os.path.dirname(target), mode=0o755, exist_ok=True)
    if not is_dir and not os.path.exists(target):
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o644))
    return target


def _account_files() -> dict[str, str]:
    """An ``/etc/passwd`` and ``/etc/group`` naming only root and the graders' uids (no host user listed), so
    ``getpass.getuser()`` works in the child: written once (root-only folder, atomic rename), bound in each
    child's root (writing them per child costs more than the rest of the root together)."""
    users = ["root:x:0:0:root:/nonexistent:/usr/sbin/nologin"] + \
        [f"grader{u - BASE_UID}:x:{u}:{u}:graded code:/tmp:/usr/sbin/nologin" for u in range(BASE_UID, BASE_UID + N_UIDS)]
    groups = ["root:x:0:"] + [f"grader{u - BASE_UID}:x:{u}:" for u in range(BASE_UID, BASE_UID + N_UIDS)]
    os.makedirs(SLOT_DIR, mode=0o700, exist_ok=True)
    files = {}
    for name, lines in (("passwd", users), ("group", groups)):
        path = os.path.join(SLOT_DIR, name)
        text = "\n".join(lines) + "\n"
        try:
            with open(path) as handle:
                current = handle.read()
        except OSError:
            current = None
        if current != text:
            temporary = f"{path}.{os.getpid()}"
            with open(temporary, "w") as handle:
                handle.write(text)
            os.chmod(temporary, 0o644)
            os.replace(temporary, path)
        files[f"/etc/{name}"] = path
    return files


def _build_root(root: str, file_size_mb: int) -> None:
    """Fill the empty tmpfs ``root`` from the allow-list (the host stays untouched). ``/proc`` is the host's
    until the PID namespace's init mounts its own over it (:func:`finish_pid_namespace`)."""
    plan = child_root_plan()
    sources = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in plan["binds"]]
    proc_fd = os.open("/proc", os.O_PATH | os.O_CLOEXEC | os.O_DIRECTORY)
    device_fds = [(d, os.open(f"/dev/{d}", os.O_PATH | os.O_CLOEXEC)) for d in plan["devices"]]
    file_fds = [(target, os.open(source, os.O_PATH | os.O_CLOEXEC)) for target, source in plan["files"].items()]
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=2m")
    for name in ("etc", "proc", "sys", "dev", "var", "tmp"):
        os.makedirs(os.path.join(root, name), mode=0o755, exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    for path in FRESH_DIRS:
        if path == "/dev/shm":
            continue
        target = _prepare(root, path, True)
        _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,size={4 * file_size_mb}m")
    _mount("tmpfs", root + "/dev", "tmpfs", _MS_NOSUID | _MS_NOEXEC, "mode=755,size=64k")
    for name, fd in device_fds:
        _mount(f"/proc/self/fd/{fd}", _prepare(root, f"/dev/{name}", False), None, _MS_BIND)
        os.close(fd)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    os.makedirs(root + "/dev/shm", mode=0o755)
    _mount("tmpfs", root + "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, f"mode=1777,size={4 * file_size_mb}m")
    for link, target in sorted(plan["links"].items(), key=lambda item: item[0].count("/")):
        os.makedirs(os.path.dirname(root + link), mode=0o755, exist_ok=True)
        if not os.path.lexists(root + link):
            os.symlink(target, root + link)
    for path, fd in sources:     # recursive: a folder mounted inside one (a venv's site-packages) comes along
        target = _prepare(root, path, os.path.isdir(f"/proc/self/fd/{fd}"))
        _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
        os.close(fd)
    _mount(f"/proc/self/fd/{proc_fd}", root + "/proc", None, _MS_BIND | _MS_REC)
    os.close(proc_fd)
    for target, fd in file_fds:
        _mount(f"/proc/self/fd/{fd}", _prepare(root, target, False), None, _MS_BIND)
        os.close(fd)
    os.mkdir(root + "/.old-root", 0o700)


_MOUNT_ATTR_RDONLY, _MOUNT_ATTR_NOSUID, _MOUNT_ATTR_NODEV, _MOUNT_ATTR_NOEXEC = 1, 2, 4, 8
_AT_FDCWD, _AT_RECURSIVE, _SYS_mount_setattr = -100, 0x8000, 442


def _set_attributes(path: str, set_: int, clear: int = 0, recursive: bool = True) -> None:
    """``mount_setattr(2)`` (Linux 5.12+): change the flags of a whole tree of mounts in one call."""
    attr = (ctypes.c_uint64 * 4)(set_, clear, 0, 0)
    _libc.syscall.restype = ctypes.c_long
    result = _libc.syscall(ctypes.c_long(_SYS_mount_setattr), ctypes.c_int(_AT_FDCWD), path.encode(),
                           ctypes.c_uint(_AT_RECURSIVE if recursive else 0), ctypes.byref(attr),
                           ctypes.c_size_t(ctypes.sizeof(attr)))
    _check(0 if result == 0 else -1, f"mount_setattr {path}")


def _seal() -> None:
    """After the pivot: every mount read-only, no set-uid, no device nodes; then the fresh tmp folders writable
    again and ``/dev``'s nodes usable (no exec there). One system call per rule where the kernel has
    ``mount_setattr``, else a remount per mount."""
    fresh = [p for p in FRESH_DIRS if os.path.isdir(p)]
    try:
        _set_attributes("/", _MOUNT_ATTR_RDONLY | _MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
        _set_attributes("/dev", _MOUNT_ATTR_NOEXEC, _MOUNT_ATTR_NODEV)
        _set_attributes("/dev/shm", _MOUNT_ATTR_NODEV, recursive=False)
        for path in fresh:
            _set_attributes(path, 0, _MOUNT_ATTR_RDONLY, recursive=False)
        return
    except OSError:
        pass
    for point in _mount_points():
        if point in fresh or _inside(point, "/proc"):
            continue
        if point == "/dev":
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NOEXEC
        elif _inside(point, "/dev"):
            continue
        else:
            flags = _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        try:
            _mount(None, point, None, _MS_REMOUNT | _MS_BIND | flags)
        except OSError:
            pass


def _enter_root(root: str) -> None:
    """Make ``root`` the process's ``/`` and detach the host's tree (``pivot_root``; ``chroot`` where the
    current root cannot be pivoted, e.g. an initramfs: the child has no capability left to leave it)."""
    os.chdir(root)
    number = _SYS_pivot_root.get(os.uname().machine)
    try:
        if number is None:
            raise OSError("pivot_root: unknown system call number on this machine")
        _libc.syscall.restype = ctypes.c_long
        if _libc.syscall(ctypes.c_long(number), b".", b".old-root") != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pivot_root: {os.strerror(err)}")
        os.chdir("/")
        _check(_libc.umount2(b"/.old-root", _MNT_DETACH), "umount /.old-root")
        os.rmdir("/.old-root")
    except OSError:
        if os.path.isdir(".old-root"):
            os.rmdir(".old-root")
        os.chroot(".")
        os.chdir("/")
    _seal()



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
    next fork. The mount namespace's root is built from an allow-list (:func:`child_root_plan`): nothing
    else of the host is there (no working directory, no ``/home``, ``/root``, ``/srv``, no other copy of
    the course, no socket file); then ``hide`` (the forbidden libraries' files, the submissions) is
    covered. ``project_root`` is kept for callers; only the course files the plan names are shown."""
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | (CLONE_NEWPID if new_pid_namespace else 0)),
           "unshare")
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    root = "/tmp" if os.path.isdir("/tmp") and not os.path.islink("/tmp") else "/mnt"
    _build_root(root, file_size_mb)
    _enter_root(root)
    binds = child_root_plan()["binds"]
    for path in hide:     # only what the allow-list shows needs covering; a folder above it must stay
        if not any(path != b and _inside(path, b) for b in binds):
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


# --------------------------------------------------------------------------- nothing outlives its exercise
_PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Make this process (the zygote) the *subreaper* of its descendants: a graded child's grandchild that
    called ``setsid`` (so a process-group kill misses it) is re-parented here when its parent ends, not to
    init, so :func:`end_strays` finds and ends it even without a PID namespace."""
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _process_table() -> dict[int, tuple[int, str]]:
    """``pid -> (parent pid, state)`` of every process this one can see."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
                table[int(entry)] = (int(fields[1]), fields[0])
            except (OSError, IndexError, ValueError):
                pass
    return table


def end_strays(keep: set[int], attempts: int = 200) -> list[int]:
    """Kill and reap every descendant of this process outside the subtrees of ``keep`` (the jobs still
    running): the remains of an ended exercise, whatever session or process group they moved to. Returns
    the processes it killed. Used where no PID namespace ends a child's whole tree with it."""
    import time

    me, killed = os.getpid(), []
    for _ in range(attempts):
        children: dict[int, list[int]] = {}
        table = _process_table()
        for pid, (parent, _state) in table.items():
            children.setdefault(parent, []).append(pid)
        stray, stack = [], [p for p in children.get(me, []) if p not in keep]
        while stack:
            pid = stack.pop()
            stray.append(pid)
            stack.extend(children.get(pid, []))
        if not stray:
            return killed
        for pid in stray:
            if table[pid][1] != "Z":
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        for pid in children.get(me, []):
            if pid not in keep:
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
        time.sleep(0.005)
    return killed
