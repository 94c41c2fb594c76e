"""Run untrusted (model-written) Python with limits, from a pool of pre-forked "zygote" workers.

Used by codeio.py to execute generated functions and to verify predicted inputs; anything that runs
code it did not write should go through here. The module imports only the standard library, because
its own source is what the zygote process runs (`python -I -c <this file> --zygote CONFIG`).

How it works
    Sandbox(workers=N) starts N zygotes. Each imports the `preload` modules (numpy, json, ...) once
    and then serves one job at a time: it forks a child per job, waits for it with a wall-clock
    deadline, kills everything the job left, and reports how the child ended. The zygote never reads
    a job: the parent writes the job (code, stdin, arguments) into a memfd and passes it, together
    with memfds for stdout, stderr and the return value, over a socket (SCM_RIGHTS); only the forked
    child reads it. So every job starts from a zygote that has never held any job's code or output,
    and the parent reads the outputs itself. Forking a warm zygote costs milliseconds instead of a
    fresh interpreter plus imports (bench/sandbox.py measures it). A zygote that dies or stops
    answering is killed and replaced; its job is reported as "sandbox_error" (an infrastructure
    failure, never the program's fault: callers must not score it) and the batch goes on.

Full isolation (the default; `Sandbox.isolation["level"] == "full"`)
    Each zygote runs inside bubblewrap (`bwrap`, the OS package Flatpak uses). As an ordinary user,
    bwrap creates a user namespace (the caller's uid mapped to itself, no capabilities) and
    --disable-userns. As root, bwrap runs privileged without a user namespace and keeps only
    CAP_SETUID/CAP_SETGID, which the zygote uses once, before anything else, to become its worker's
    own uid (1,900,000,000 and up: outside systemd's system, regular, dynamic-user, container and
    foreign ranges; checked free in the password database and in /proc, held with a file lock);
    from then on it and its jobs have no capability at all.
    - Namespaces: user (ordinary user only), PID (the zygote is PID 1: a job cannot signal it, and
      when it dies the kernel kills every job process; close() waits for that), mount, IPC, network
      (empty: no interface but a down loopback), UTS, cgroup.
    - Files: a new root that is read-only: /usr, /etc, /bin, /lib*, /sbin and the Python
      installation (its prefix, base prefix and site-packages) bound read-only; nothing else of the
      host (no /home, /root, /run, /var, /work, the repository, or host /tmp). Writable: /tmp and
      /dev/shm, private tmpfs of `tmpfs_mb` each, emptied after every job, and /dev/mqueue (queues
      removed after every job). A fresh /proc shows only the zygote and the job's own processes.
    - Seccomp (a BPF filter built by libseccomp, loaded by bwrap for the zygote and every job):
      refuses new namespaces (clone/unshare/setns), clone3 (ENOSYS, so libc falls back to clone),
      AF_UNIX sockets (path sockets on bound files are unreachable), ptrace and
      process_vm_readv/writev, keyctl/add_key/request_key, bpf, perf_event_open, userfaultfd,
      io_uring (which would bypass the filter), mount/pivot_root/chroot, module and kexec calls.
      As an ordinary user bwrap's --disable-userns also stops nested user namespaces.
    - Memory: the zygote is not dumpable (a job of the same uid cannot ptrace it or read its
      /proc files) and never holds a job's code, input or output, so no job finds another's data.
    - Processes: each job runs in its own session; after it ends the zygote (PID 1) kills every
      other process of the namespace (kill(-1)), reaps them, and removes every SysV shared-memory
      segment, semaphore set and message queue of the IPC namespace.
    - Limits: RLIMIT_CPU (cpu_time), wall clock (timeout, SIGKILL), RLIMIT_AS (memory_mb on top of
      the zygote's own address space), RLIMIT_FSIZE (max_output bytes per file, also bounds stdout,
      stderr and the result), RLIMIT_NPROC (max_processes), RLIMIT_NOFILE, RLIMIT_CORE=0; the
      environment is empty.
    Not isolated: the kernel (exploits, CPU caches, timing side channels); memory is bounded per
    process by RLIMIT_AS, not by a cgroup (a job may hold max_processes x memory_mb until the
    sweep); the files bound read-only (/usr, /etc, the Python installation) can be read; a job can
    kill itself or spend its own time but cannot see, signal or outlive other jobs.

Weaker isolation (only with `allow_weaker=True`; `isolation["missing"]` names what is absent)
    Where bubblewrap, unprivileged user namespaces or libseccomp are unavailable, Sandbox() raises
    SandboxUnavailable with what is missing and how to get it. With allow_weaker=True it runs what
    it can: with bwrap but no libseccomp, every layer above except the seccomp filter (as an
    ordinary user bwrap's --disable-userns still refuses nested user namespaces, as root nothing
    does; AF_UNIX sockets are reachable if a socket file lies in a bound directory; ptrace of the
    job's own processes works). Without bwrap the zygote runs directly:
    - as root, each job under its worker's unused uid (as above); the sweep kills every process of
      that uid (kill(-1)) and removes its SysV IPC objects; the job cannot write root's files, and
      imports only what that uid can read (a Python under /root: only the preloaded modules);
    - the job's own session, the same rlimits, an empty environment, a fresh working directory;
    - with libseccomp, a filter refusing socket() of every family (no network), new namespaces,
      ptrace and the calls listed above; without it only the constructors of Python's socket and
      _socket modules are disabled (a job using ctypes still reaches the network);
    - NOT isolated then: the host filesystem (the job reads what its uid may read and writes every
      world-writable directory: /tmp, /var/tmp, /dev/shm, /run/lock; as an ordinary user it is the
      caller and can write the caller's files), other processes in /proc, and, as an ordinary
      user, the caller's other processes (RLIMIT_NPROC is not set: it would count them too).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import sys
import threading
import time

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "crash", "killed", "sandbox_error")
INFRASTRUCTURE_STATUSES = (
    "sandbox_error",
)  # the sandbox failed, not the program: never score these
MEMORY_EXIT_CODE = 121  # the child exits with this when user code raised MemoryError
SETUP_EXIT_CODE = 122  # the child could not apply its limits; the job never ran
DEFAULT_PRELOAD = (  # the CodeI/O verifier prefixes ~40 stdlib/numpy imports (hkust-nlp/CodeIO:
    # src/codeio_utils.py, solution_prefix); importing them once per zygote makes jobs cheap
    "json",
    "math",
    "random",
    "re",
    "string",
    "collections",
    "itertools",
    "functools",
    "heapq",
    "bisect",
    "copy",
    "decimal",
    "fractions",
    "statistics",
    "operator",
    "datetime",
    "typing",
    "dataclasses",
    "traceback",
    "socket",
    "numpy",
)
UID_BASE, UID_SPAN = 1_900_000_000, 100_000  # systemd uses < 1879048192 and >= 2147352576
HOW_TO = {
    "bubblewrap": "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf "
    "install bubblewrap)",
    "user namespaces": "let ordinary users create user namespaces (sysctl -w "
    "user.max_user_namespaces=15000; Debian < 11: kernel.unprivileged_userns_clone=1; "
    "Ubuntu >= 23.10: kernel.apparmor_restrict_unprivileged_userns=0); in Docker "
    "run with --security-opt seccomp=unconfined or use a VM",
    "seccomp": "install libseccomp (Debian/Ubuntu: apt-get install libseccomp2)",
}


class SandboxUnavailable(RuntimeError):
    """A required isolation layer is missing; the message says which and how to get it."""


@dataclasses.dataclass
class ExecResult:
    status: str  # one of STATUSES
    stdout: str = ""
    stderr: str = ""
    returncode: int | None = None  # exit code, or -signal
    elapsed: float = 0.0  # seconds from fork to exit, measured by the zygote
    value: object = None  # call(): the function's return value (parsed from JSON)
    value_json: str | None = None  # call(): the raw JSON text of the return value

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def infrastructure_failure(self) -> bool:
        """True when the sandbox, not the program, failed: do not score it, do not show it."""
        return self.status in INFRASTRUCTURE_STATUSES


# ----------------------------------------------------------------------------------------------
# Seccomp (libseccomp through ctypes; used by the parent for bwrap and by a weaker-mode zygote)
# ----------------------------------------------------------------------------------------------
_CLONE_NEW = {
    "NEWNS": 0x20000,
    "NEWCGROUP": 0x02000000,
    "NEWUTS": 0x04000000,
    "NEWIPC": 0x08000000,
    "NEWUSER": 0x10000000,
    "NEWPID": 0x20000000,
    "NEWNET": 0x40000000,
}
_DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "unshare",
    "setns",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "fsopen",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
)


def _libseccomp():
    import ctypes

    for name in ("libseccomp.so.2", "libseccomp.so"):
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_void_p,
        ]
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        return lib
    return None


def seccomp_filter(deny_all_sockets: bool = False):
    """A libseccomp filter context (None without libseccomp): default allow; EPERM for the calls in
    _DENIED, for clone() with any CLONE_NEW* flag and for socket(AF_UNIX) (every socket() when
    deny_all_sockets); ENOSYS for clone3 (its flags sit in memory a filter cannot read)."""
    import ctypes
    import errno

    lib = _libseccomp()
    if lib is None:
        return None

    class Arg(ctypes.Structure):  # struct scmp_arg_cmp (seccomp.h)
        _fields_ = [
            ("arg", ctypes.c_uint),
            ("op", ctypes.c_int),
            ("datum_a", ctypes.c_uint64),
            ("datum_b", ctypes.c_uint64),
        ]

    allow, masked_eq, equal = 0x7FFF0000, 7, 4  # SCMP_ACT_ALLOW, SCMP_CMP_MASKED_EQ, SCMP_CMP_EQ
    ctx = lib.seccomp_init(allow)
    if not ctx:
        return None

    def deny(name: str, code: int = errno.EPERM, *conditions):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0:  # unknown to this libseccomp/architecture: nothing to deny
            return
        array = (Arg * max(1, len(conditions)))(*[Arg(*c) for c in conditions])
        if lib.seccomp_rule_add_array(ctx, 0x00050000 | code, number, len(conditions), array) != 0:
            raise OSError(f"seccomp_rule_add_array({name}) failed")

    for name in _DENIED:
        deny(name)
    deny("clone3", errno.ENOSYS)
    for flag in _CLONE_NEW.values():
        deny("clone", errno.EPERM, (0, masked_eq, flag, flag))
    if deny_all_sockets:
        deny("socket")
    else:
        deny("socket", errno.EPERM, (0, equal, socket.AF_UNIX, 0))
    return lib, ctx


def seccomp_bpf(deny_all_sockets: bool = False) -> bytes | None:
    """The filter as a BPF program (what `bwrap --seccomp FD` reads)."""
    built = seccomp_filter(deny_all_sockets)
    if built is None:
        return None
    lib, ctx = built
    fd = os.memfd_create("seccomp")
    try:
        if lib.seccomp_export_bpf(ctx, fd) != 0:
            return None
        return os.pread(fd, 1 << 20, 0)
    finally:
        os.close(fd)
        lib.seccomp_release(ctx)


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
def _install_paths() -> list[str]:
    """The Python installation a job needs (prefixes and site-packages), outermost paths only."""
    import sysconfig

    paths = {
        os.path.realpath(p)
        for p in (
            sys.base_prefix,
            sys.prefix,
            sys.exec_prefix,
            sys.base_exec_prefix,
            sysconfig.get_paths()["stdlib"],
            sysconfig.get_paths()["purelib"],
            sysconfig.get_paths()["platlib"],
        )
        if os.path.isdir(p)
    }
    paths |= {p for p in (sys.base_prefix, sys.prefix) if os.path.isdir(p)}  # as named (symlinks)
    paths.add(os.path.dirname(os.path.dirname(os.path.realpath(sys.executable))))  # bin/python
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths if q != p))


def _bwrap_version() -> str | None:
    import shutil
    import subprocess

    path = shutil.which("bwrap")
    if path is None:
        return None
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().split()[-1] if done.returncode == 0 and done.stdout.strip() else None


def _uid_is_free(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
        return False
    except KeyError:
        pass
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    return False
            except OSError:
                continue
    return True


def _claim_uid() -> tuple[int, int]:
    """An unused uid for one worker (root only), held by an exclusive flock until the fd closes."""
    import fcntl

    lock_dir = "/run/nanoreason-sandbox-uids" if os.path.isdir("/run") else "/tmp/nanoreason-uids"
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    start = os.getpid() % UID_SPAN
    for offset in range(UID_SPAN):
        uid = UID_BASE + (start + offset) % UID_SPAN
        fd = os.open(f"{lock_dir}/{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if _uid_is_free(uid):
            return uid, fd
        os.close(fd)
    raise RuntimeError(f"common/sandbox.py: no free uid in [{UID_BASE}, {UID_BASE + UID_SPAN})")


def _bwrap_command(config: dict, fds: list[int], bpf_fd: int | None) -> list[str]:
    """bwrap arguments for one zygote; `fds` receives the fds bwrap must inherit. As an ordinary
    user bwrap makes a user namespace; as root it runs privileged (no user namespace) and keeps
    only CAP_SETUID/CAP_SETGID, which the zygote uses once to become the worker uid."""
    tmp_bytes = str(config["tmpfs_mb"] << 20)
    if config["uid"] is None:
        cmd = ["bwrap", "--unshare-user", "--disable-userns"]
    else:
        cmd = ["bwrap", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    cmd += [
        "--unshare-pid",
        "--as-pid-1",
        "--unshare-net",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--ro-bind", "/etc", "/etc", "--perms", "1777", "--size", tmp_bytes, "--tmpfs", "/tmp"]
    for path in _install_paths():  # after /tmp: a CI clone's .venv may live under /tmp
        if not path.startswith(("/usr/", "/etc/")) and path not in ("/usr", "/etc"):
            parts = path.split("/")
            for depth in range(2, len(parts)):  # bwrap would make the parents 0700 (e.g. /root)
                cmd += ["--perms", "0755", "--dir", "/".join(parts[:depth])]
            cmd += ["--ro-bind", path, path]
    cmd += [
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--perms",
        "1777",
        "--size",
        tmp_bytes,
        "--tmpfs",
        "/dev/shm",
        "--mqueue",
        "/dev/mqueue",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
    ]
    if bpf_fd is not None:
        fds.append(bpf_fd)
        cmd += ["--seccomp", str(bpf_fd)]
    return cmd


class _Worker:
    """One zygote process and its control socket; used by one thread at a time."""

    def __init__(self, config: dict, plan: dict):
        self.config = config
        self.plan = plan
        self.proc = None
        self.sock = None
        self.zygote_pidfd = None
        self.lock = threading.Lock()
        self.closed = False  # set by Sandbox.close(): a job cut short then is not restarted
        self.isolation: dict = {}
        self.start()

    def start(self):
        import subprocess

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = [child_sock.fileno()]
        config = dict(self.config, control_fd=child_sock.fileno())
        with open(os.path.abspath(__file__).replace(".pyc", ".py"), encoding="utf-8") as handle:
            source = handle.read()
        python = [sys.executable, "-I", "-c", source, "--zygote", json.dumps(config)]
        bpf_read = None
        if self.plan["bwrap"]:
            if self.plan["bpf"] is not None:
                bpf_read, bpf_write = os.pipe()
                os.write(bpf_write, self.plan["bpf"])  # a few KB: fits in the pipe buffer
                os.close(bpf_write)
            cmd = _bwrap_command(self.config, fds, bpf_read) + python
        else:
            cmd = python
        import tempfile

        errors = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env={},
                cwd="/",
                start_new_session=True,
                pass_fds=fds,
            )
        finally:
            for fd in fds:
                os.close(fd)  # child_sock's fd, the seccomp pipe
            child_sock.detach()
        self.sock = parent_sock
        hello = self._receive(time.monotonic() + 60.0)
        if hello is None:
            self.kill()
            errors.seek(0)
            detail = errors.read(4000).decode(errors="replace").strip()
            errors.close()
            raise SandboxUnavailable(
                f"common/sandbox.py: the sandbox zygote did not start "
                f"({' '.join(cmd[:1])}): {detail or 'no message'}"
            )
        errors.close()
        self.isolation = hello["isolation"]
        zygote = self.proc.pid  # with bwrap: its only child, PID 1 of the namespace
        if self.plan["bwrap"]:
            zygote = _children(zygote)[0]
        self.zygote_pidfd = os.pidfd_open(zygote)

    def _receive(self, deadline: float) -> dict | None:
        sock = self.sock
        remaining = deadline - time.monotonic()
        try:
            if sock is None or remaining <= 0 or not select.select([sock], [], [], remaining)[0]:
                return None
            data = sock.recv(1 << 16)
        except (OSError, ValueError):  # closed under us by Sandbox.close()
            return None
        return json.loads(data) if data else None  # b"": the zygote died

    def request(self, job: dict, control: dict, wait_s: float, max_output: int) -> ExecResult:
        files = {name: os.memfd_create(name) for name in ("job", "stdout", "stderr", "result")}
        try:
            payload = json.dumps(job).encode()
            view = memoryview(payload)
            while view:
                view = view[os.write(files["job"], view) :]
            try:
                socket.send_fds(self.sock, [json.dumps(control).encode()], list(files.values()))
                reply = self._receive(time.monotonic() + wait_s)
            except OSError:
                reply = None
            if reply is None:  # the zygote died or hangs: never block, replace it
                self.kill()
                if self.closed:
                    return ExecResult("sandbox_error", stderr="the sandbox was closed")
                self.start()
                return ExecResult(
                    "sandbox_error", stderr="sandbox worker died or stopped answering; replaced"
                )
            return _finish(reply, files, job, max_output)
        finally:
            for fd in files.values():
                os.close(fd)

    def kill(self):
        """Kill the zygote and wait until it is gone: when PID 1 of a namespace exits, the kernel
        kills every other process in it and finishes the exit only after they are all reaped."""
        with self.lock:  # Sandbox.close() and a request that lost its zygote may both get here
            if self.proc is None:
                return
            if self.zygote_pidfd is not None:
                try:
                    signal.pidfd_send_signal(self.zygote_pidfd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                select.select([self.zygote_pidfd], [], [], 10.0)
                os.close(self.zygote_pidfd)
                self.zygote_pidfd = None
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            self.proc = None
            if self.sock is not None:
                self.sock.close()
                self.sock = None


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (from /proc/<pid>/stat parent links)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _read_memfd(fd: int, limit: int) -> str:
    return os.pread(fd, limit, 0).decode("utf-8", errors="replace")


def _finish(reply: dict, files: dict, job: dict, cap: int) -> ExecResult:
    """The status of a job from how its process ended (zygote's reply) and its output files."""
    sizes = {name: os.fstat(fd).st_size for name, fd in files.items()}
    result = ExecResult(
        "error",
        stdout=_read_memfd(files["stdout"], cap),
        stderr=_read_memfd(files["stderr"], cap),
        elapsed=reply["elapsed"],
    )
    if reply.get("error"):
        result.status = "sandbox_error"
        result.stderr = f"sandbox: {reply['error']}"
        return result
    if reply["signal"]:
        number = reply["signal"]
        result.returncode = -number
        result.status = (
            "timeout"
            if reply["timed_out"] or number == signal.SIGXCPU
            else "output_limit"
            if number == signal.SIGXFSZ
            else "crash"
            if number
            in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGILL, signal.SIGFPE)
            else "killed"
        )
        return result
    code = reply["returncode"]
    result.returncode = code
    result.status = {0: "ok", MEMORY_EXIT_CODE: "memory", SETUP_EXIT_CODE: "sandbox_error"}.get(
        code, "error"
    )
    if reply["timed_out"]:
        result.status = "timeout"
    if result.status == "ok" and job.get("call"):
        text = _read_memfd(files["result"], cap + 1)
        if sizes["result"] > cap:
            result.status = "output_limit"
        elif not text:
            result.status = "error"
        else:
            result.value_json = text
            try:
                result.value = json.loads(text)
            except ValueError:
                result.status = "error"
                result.stderr += "\nsandbox: the result is not valid JSON"
    if result.status in ("ok", "error") and max(sizes["stdout"], sizes["stderr"]) >= cap:
        # stdout/stderr reached RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write raised EFBIG)
        result.status = "output_limit"
    return result


def probe_isolation() -> dict:
    """What this machine offers: bubblewrap version, libseccomp, and the missing layers."""
    version = _bwrap_version()
    bpf = seccomp_bpf()
    missing = ([] if version else ["bubblewrap"]) + ([] if bpf else ["seccomp"])
    return {"bubblewrap": version, "bpf": bpf, "missing": missing}


class Sandbox:
    """A pool of zygote workers. Thread-safe: run() from several threads uses several workers.

    Args:
        workers: parallel jobs (one zygote each).
        timeout: wall-clock seconds per job (default for run/call; per-call override).
        cpu_time: RLIMIT_CPU seconds per job; default ceil(timeout) + 1.
        memory_mb: address space a job may add on top of the zygote's (RLIMIT_AS).
        max_output: bytes kept of stdout/stderr/result, the largest file a job may write.
        max_processes: RLIMIT_NPROC of a job (not set for an ordinary user without bwrap).
        tmpfs_mb: size of the private /tmp and /dev/shm of the jobs.
        preload: modules imported once in the zygote so jobs import them for free.
        allow_weaker: run with whatever isolation is available instead of raising
            SandboxUnavailable; `isolation` then lists what is missing.
    """

    def __init__(
        self,
        workers: int = 4,
        timeout: float = 5.0,
        cpu_time: float | None = None,
        memory_mb: int = 1024,
        max_output: int = 1 << 20,
        max_processes: int = 64,
        tmpfs_mb: int = 256,
        preload: tuple[str, ...] = DEFAULT_PRELOAD,
        allow_weaker: bool = False,
    ):
        import queue

        if workers < 1 or timeout <= 0 or memory_mb < 16 or max_output < 1:
            raise ValueError(
                f"bad Sandbox arguments: workers={workers} timeout={timeout} "
                f"memory_mb={memory_mb} max_output={max_output}"
            )
        self.timeout = float(timeout)
        self.cpu_time = cpu_time
        self.max_output = max_output
        self._owner_pid = (
            os.getpid()
        )  # a forked copy (e.g. a DataLoader worker) must not kill the pool
        self._uid_locks: list[int] = []
        self._workers: list[_Worker] = []
        self._idle: queue.Queue = queue.Queue()
        self._missing: list[str] = []
        self.token = os.urandom(8).hex()  # in every zygote's command line: find its processes by it
        probe = probe_isolation()
        plan = {"bwrap": probe["bubblewrap"] is not None, "bpf": probe["bpf"]}
        missing = self._missing
        missing += probe["missing"]
        if missing and not allow_weaker:
            raise SandboxUnavailable(_unavailable_message(missing))
        as_root = os.geteuid() == 0
        try:
            for index in range(workers):
                uid = None
                if as_root:
                    uid, lock_fd = _claim_uid()
                    self._uid_locks.append(lock_fd)
                config = dict(
                    token=self.token,
                    uid=uid,
                    memory_mb=memory_mb,
                    max_output=max_output,
                    max_processes=max_processes,
                    tmpfs_mb=tmpfs_mb,
                    preload=list(preload),
                    bwrap=plan["bwrap"],
                    seccomp=probe["bpf"] is not None,
                )
                try:
                    worker = _Worker(config, plan)
                except SandboxUnavailable as error:  # bwrap present but no user namespaces
                    if not plan["bwrap"] or index > 0:
                        raise
                    if not allow_weaker:
                        raise SandboxUnavailable(
                            _unavailable_message(["user namespaces"], error)
                        ) from error
                    plan["bwrap"] = False
                    missing.append("user namespaces")
                    config["bwrap"] = False
                    worker = _Worker(config, plan)
                self._workers.append(worker)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> dict:
        """What is active: level (full | weaker), missing layers, and each layer as set up."""
        if not self._workers:
            return {}
        return {
            "level": "weaker" if self._missing else "full",
            "missing": list(self._missing),
            **self._workers[0].isolation,
        }

    @property
    def uids(self) -> list[int | None]:
        return [worker.config["uid"] for worker in self._workers]

    def _submit(self, job: dict, timeout: float | None) -> ExecResult:
        timeout = self.timeout if timeout is None else float(timeout)
        cpu_time = self.cpu_time if self.cpu_time is not None else int(timeout) + 1
        control = {"timeout": timeout, "cpu_time": cpu_time}
        worker = self._idle.get()
        try:  # the zygote enforces `timeout`; the parent's own deadline only catches a hung zygote
            return worker.request(job, control, wait_s=timeout + 10.0, max_output=self.max_output)
        finally:
            self._idle.put(worker)

    def run(self, code: str, stdin: str | None = None, timeout: float | None = None) -> ExecResult:
        """Execute `code` as a __main__ script; stdin text optional."""
        return self._submit({"code": code, "stdin": stdin}, timeout)

    def call(
        self, code: str, func_name: str, kwargs_json: str | dict, timeout: float | None = None
    ) -> ExecResult:
        """Execute `code`, then `func_name(**json.loads(kwargs_json))`; the JSON-serialised return
        value comes back in `.value` / `.value_json` (a non-JSON result is status "error")."""
        if not isinstance(kwargs_json, str):
            kwargs_json = json.dumps(kwargs_json)
        job = {"code": code, "call": func_name, "kwargs_json": kwargs_json}
        return self._submit(job, timeout)

    def _parallel(self, fn, argument_lists):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self._workers)) as pool:
            return list(pool.map(lambda args: fn(*args), argument_lists))

    def run_many(
        self, codes: list[str], stdins: list | None = None, timeout: float | None = None
    ) -> list[ExecResult]:
        stdins = stdins if stdins is not None else [None] * len(codes)
        return self._parallel(self.run, [(c, s, timeout) for c, s in zip(codes, stdins)])

    def call_many(
        self, calls: list[tuple[str, str, str | dict]], timeout: float | None = None
    ) -> list[ExecResult]:
        """calls: (code, func_name, kwargs) triples, run in parallel, results in order."""
        return self._parallel(self.call, [(c, f, k, timeout) for c, f, k in calls])

    def close(self):
        """Kill every zygote and with it every job process (even one running now)."""
        if os.getpid() != self._owner_pid:
            return
        for worker in self._workers:
            worker.closed = True
            worker.kill()
            if worker.config["uid"] is not None and not worker.config["bwrap"]:
                _kill_uid(worker.config["uid"])  # without a PID namespace: the uid's processes
        self._workers = []
        for fd in self._uid_locks:
            os.close(fd)
        self._uid_locks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _unavailable_message(missing: list[str], error: Exception | None = None) -> str:
    lines = [f"common/sandbox.py: cannot isolate untrusted code: missing {', '.join(missing)}."]
    lines += [f"  - {name}: {HOW_TO[name]}" for name in missing]
    if error is not None:
        lines.append(f"  ({error})")
    lines.append(
        "  Or accept weaker isolation: Sandbox(allow_weaker=True) "
        "(codeio.py: --sandbox_allow_weaker); the module docstring says what it lacks."
    )
    return "\n".join(lines)


def call_function(
    code: str,
    func_name: str,
    kwargs_json: str | dict,
    sandbox: Sandbox | None = None,
    timeout: float = 5.0,
    **sandbox_kwargs,
) -> ExecResult:
    """One-off helper: `func_name(**kwargs)` from `code` in `sandbox` (or a temporary 1-worker
    one)."""
    if sandbox is not None:
        return sandbox.call(code, func_name, kwargs_json, timeout=timeout)
    with Sandbox(workers=1, timeout=timeout, **sandbox_kwargs) as temporary:
        return temporary.call(code, func_name, kwargs_json)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of `uid` (kill(-1) from a helper running as that uid), then reap it."""
    helper = os.fork()
    if helper == 0:
        try:
            os.setgid(uid)
            os.setuid(uid)
            os.kill(-1, signal.SIGKILL)
        except BaseException:
            pass
        os._exit(0)
    os.waitpid(helper, 0)


# ----------------------------------------------------------------------------------------------
# Zygote side (runs in its own `python -I` process; standard library only)
# ----------------------------------------------------------------------------------------------
_PR_SET_NO_NEW_PRIVS = 38
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def _block_network_in_python():
    """Last-resort fallback (no network namespace, no seccomp): every socket constructor raises,
    in `socket` and in the C module `_socket` it wraps. ctypes can still reach libc."""
    import _socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    for module in (socket, _socket):
        for name in (
            "socket",
            "create_connection",
            "socketpair",
            "fromfd",
            "create_server",
            "SocketType",
        ):
            if hasattr(module, name):
                setattr(module, name, refuse)


def _child(
    fds: dict,
    control: dict,
    config: dict,
    iso: dict,
    libc,
    filter_ctx,
    address_space: int,
    workdir: str,
) -> None:
    """Runs in the forked child: read the job, apply limits, execute it, never return."""
    import builtins
    import resource
    import traceback

    exit_code = 0
    try:
        os.setsid()
        job_text = b""
        while chunk := os.pread(fds["job"], 1 << 20, len(job_text)):
            job_text += chunk
        job = json.loads(job_text)
        stdin = os.memfd_create("stdin") if job.get("stdin") is not None else None
        if stdin is not None:
            os.write(stdin, job["stdin"].encode())
            os.lseek(stdin, 0, os.SEEK_SET)
        else:
            stdin = os.open(os.devnull, os.O_RDONLY)
        for source, target in (
            (stdin, 0),
            (fds["stdout"], 1),
            (fds["stderr"], 2),
            (fds["result"], 3),
        ):
            os.dup2(source, target)
        os.closerange(4, 65536)  # the control socket, the job memfd, every other fd of the zygote
        os.chdir(workdir)
        cpu = max(1, int(control["cpu_time"]))
        limits = [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, address_space, address_space),
            (resource.RLIMIT_FSIZE, config["max_output"], config["max_output"]),
            (resource.RLIMIT_NOFILE, 256, 256),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if config["bwrap"] or config["uid"] is not None:  # per-uid count: only when the uid is ours
            limits.append((resource.RLIMIT_NPROC, config["max_processes"], config["max_processes"]))
        for kind, soft, hard in limits:
            resource.setrlimit(kind, (soft, hard))
        if (
            config["uid"] is not None and not config["bwrap"]
        ):  # weaker mode as root: drop to the uid
            os.setgroups([])
            os.setgid(config["uid"])
            os.setuid(config["uid"])
        libc.prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)  # its own /proc/self (the zygote stays closed)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        if filter_ctx is not None:  # weaker mode: the zygote could not get bwrap to load it
            if filter_ctx[0].seccomp_load(filter_ctx[1]) != 0:
                raise OSError("seccomp_load failed")
        os.environ.clear()  # also unsetenv() of every variable
        if iso["network"] == "python-level socket block":
            _block_network_in_python()
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
    except BaseException:
        os._exit(SETUP_EXIT_CODE)
    try:
        namespace = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(job["code"], "<sandbox>", "exec"), namespace)
        if job.get("call"):
            function = namespace.get(job["call"])
            if not callable(function):
                raise NameError(f"the code defines no function {job['call']!r}")
            result = function(**json.loads(job["kwargs_json"]))
            try:
                payload = json.dumps(result).encode()
            except (TypeError, ValueError) as error:
                raise TypeError(f"the return value is not JSON-serialisable: {error}") from None
            view = memoryview(payload)
            while view:
                view = view[os.write(3, view) :]
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            exit_code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            exit_code = 1
    except MemoryError:
        exit_code = MEMORY_EXIT_CODE
        try:
            sys.stderr.write("MemoryError\n")
        except BaseException:
            pass
    except BaseException:
        exit_code = 1
        try:
            traceback.print_exc()
        except BaseException:
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(exit_code & 0xFF)


def _remove_sysv_ipc(libc, owner: int | None) -> None:
    """IPC_RMID every SysV shared-memory segment, semaphore set and message queue (of `owner`)."""
    for kind, remove in (
        ("shm", lambda i: libc.shmctl(i, 0, None)),
        ("sem", lambda i: libc.semctl(i, 0, 0)),
        ("msg", lambda i: libc.msgctl(i, 0, None)),
    ):
        try:
            with open(f"/proc/sysvipc/{kind}") as handle:
                rows = [line.split() for line in handle.readlines()[1:]]
        except OSError:
            continue
        uid_column = {"shm": 7, "sem": 4, "msg": 7}[kind]
        for row in rows:
            if owner is None or int(row[uid_column]) == owner:
                remove(int(row[1]))


def _empty_dir(path: str, keep: tuple[str, ...] = ()) -> None:
    import shutil

    for entry in os.scandir(path) if os.path.isdir(path) else []:
        if any(k == entry.path or k.startswith(entry.path + "/") for k in keep):
            continue  # leads to the read-only Python installation bound under /tmp
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, onerror=_unlock_and_retry)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _unlock_and_retry(function, path: str, _) -> None:
    """rmtree's error handler: a job may have made its directories unreadable (chmod 000)."""
    try:
        os.chmod(
            path if function in (os.open, os.scandir, os.rmdir) else os.path.dirname(path), 0o700
        )
        if function in (os.open, os.scandir):
            _empty_dir(path)
            os.rmdir(path)
        else:
            function(path)
    except OSError:
        pass


def _descendants() -> list[int]:
    """Every descendant of this process, from the parent links in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    found, frontier = [], [os.getpid()]
    while frontier:
        kids = children.get(frontier.pop(), [])
        found += kids
        frontier += kids
    return found


def _sweep(config: dict, process_group: int) -> None:
    """Kill everything the job may have left, then reap it. In bwrap the zygote is PID 1 of its
    namespace and the only other legitimate process, so kill(-1) reaches every job process (the
    kernel aborts forks racing with it). Without bwrap: the job's process group, every process of
    the worker uid (as root), every descendant (the zygote is a child subreaper)."""
    try:
        os.killpg(process_group, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        if config["bwrap"]:
            try:
                os.kill(-1, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            if config["uid"] is not None:
                _kill_uid(config["uid"])
            for pid in _descendants():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no children left
        if pid == 0:
            time.sleep(0.002)


def _zygote_setup(config: dict, libc) -> tuple[dict, object]:
    """What is active in this zygote (reported to the parent) and, in weaker mode, the seccomp
    filter the children load themselves."""
    iso = {
        "bubblewrap": config["bwrap"],
        "uid": config["uid"],
        "namespaces": [],
        "filesystem": "host filesystem (no isolation)",
        "network": "python-level socket block",
        "seccomp": None,
        "nested_userns": "allowed",
    }
    filter_ctx = None
    if config["bwrap"]:
        iso["namespaces"] = (["user"] if config["uid"] is None else []) + [
            "pid",
            "mount",
            "ipc",
            "net",
            "uts",
            "cgroup",
        ]
        iso["filesystem"] = (
            "read-only root (/usr, /etc, Python installation); private tmpfs /tmp, /dev/shm"
        )
        iso["network"] = "empty network namespace"
        refusals = ["bwrap --disable-userns"] if config["uid"] is None else []
        if config["seccomp"]:
            iso["seccomp"] = (
                "libseccomp filter via bwrap --seccomp (AF_UNIX sockets, namespaces, ...)"
            )
            refusals.append("seccomp")
        iso["nested_userns"] = f"refused ({' + '.join(refusals)})" if refusals else "allowed"
    elif config["seccomp"]:
        filter_ctx = seccomp_filter(deny_all_sockets=True)
        if filter_ctx is not None:
            iso["seccomp"] = "libseccomp filter per job (every socket(), namespaces, ...)"
            iso["network"] = "seccomp: socket() refused"
            iso["nested_userns"] = "refused (seccomp)"
    libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)  # jobs of the same uid cannot ptrace or read us
    if not config["bwrap"]:
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return iso, filter_ctx


def _zygote_main(config: dict) -> None:
    import ctypes
    import importlib

    control = socket.socket(fileno=config["control_fd"])
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"  # threads started before fork() would be missing in the child
    libc = ctypes.CDLL(None, use_errno=True)
    if config["bwrap"] and config["uid"] is not None:  # root: bwrap kept CAP_SETUID/SETGID for this
        os.setgroups([])
        os.setresgid(config["uid"], config["uid"], config["uid"])
        os.setresuid(config["uid"], config["uid"], config["uid"])  # all capabilities are gone now
    iso, filter_ctx = _zygote_setup(config, libc)
    iso["preloaded"] = []
    for module in config["preload"]:
        try:
            importlib.import_module(module)
            iso["preloaded"].append(module)
        except Exception as error:
            iso.setdefault("preload_errors", {})[module] = repr(error)
    os.environ.clear()
    scratch = ["/tmp", "/dev/shm", "/dev/mqueue"] if config["bwrap"] else []
    keep = tuple(_install_paths())
    with open("/proc/self/status") as handle:
        vm_kb = int(next(line for line in handle if line.startswith("VmSize:")).split()[1])
    address_space = vm_kb * 1024 + config["memory_mb"] * (1 << 20)
    control.send(json.dumps({"isolation": iso}).encode())
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 1 << 16, 4)
        except OSError:
            return
        if not message:
            return  # the parent closed the socket
        request = json.loads(message)  # numbers only: the job itself stays in its memfd
        named = dict(zip(("job", "stdout", "stderr", "result"), fds))
        try:
            reply = _serve(named, request, config, iso, libc, filter_ctx, address_space, control)
        except Exception as error:  # a zygote bug must not kill the pool: report it
            reply = {"error": f"zygote: {error!r}", "elapsed": 0.0}
        for fd in fds:
            os.close(fd)
        if config["bwrap"]:
            _remove_sysv_ipc(libc, None)
            for path in scratch:
                _empty_dir(path, keep)
        elif config["uid"] is not None:
            _remove_sysv_ipc(libc, config["uid"])
        control.send(json.dumps(reply).encode())


def _serve(
    fds: dict,
    request: dict,
    config: dict,
    iso: dict,
    libc,
    filter_ctx,
    address_space: int,
    control: socket.socket,
) -> dict:
    import shutil
    import tempfile

    if config[
        "bwrap"
    ]:  # as an ordinary user a job owns /tmp and /dev/shm: it may have chmod-ed them
        for path in ("/tmp", "/dev/shm"):
            try:
                os.chmod(path, 0o1777)
            except OSError:
                pass
    workdir = tempfile.mkdtemp(prefix="job-")
    if config["uid"] is not None and not config["bwrap"]:
        os.chown(workdir, config["uid"], config["uid"])
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(fds, request, config, iso, libc, filter_ctx, address_space, workdir)
    timed_out = False
    status_word = None
    pidfd = os.pidfd_open(pid)
    deadline = start + request["timeout"]
    while status_word is None:
        waited_pid, word = os.waitpid(pid, os.WNOHANG)
        if waited_pid == pid:
            status_word = word
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            status_word = os.waitpid(pid, 0)[1]
            break
        if control in select.select([pidfd, control], [], [], remaining)[0]:
            _sweep(config, pid)  # the parent is gone (no request is ever sent mid-job): stop
            os._exit(0)
    elapsed = time.monotonic() - start
    os.close(pidfd)
    _sweep(config, pid)
    shutil.rmtree(workdir, ignore_errors=True)
    signalled = os.WIFSIGNALED(status_word)
    return {
        "elapsed": round(elapsed, 6),
        "timed_out": timed_out,
        "signal": os.WTERMSIG(status_word) if signalled else 0,
        "returncode": None if signalled else os.WEXITSTATUS(status_word),
    }


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--zygote":
    _zygote_main(json.loads(sys.argv[2]))
