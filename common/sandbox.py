"""Run untrusted (model-written) Python with limits, from a pool of pre-forked "zygote" workers.

Used by codeio.py to execute generated functions and to verify predicted inputs; anything that runs
code it did not write should go through here. The zygote's code is in common/sandbox_zygote.py: it
runs standard-library-only in its own interpreter (`python -I -c <that file> --zygote CONFIG`).

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

from common.sandbox_zygote import (  # the zygote's file; these are shared with the parent side
    MEMORY_EXIT_CODE,
    SETUP_EXIT_CODE,
    _install_paths,
    _kill_uid,
    seccomp_bpf,
)

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "crash", "killed", "sandbox_error")
INFRASTRUCTURE_STATUSES = (
    "sandbox_error",
)  # the sandbox failed, not the program: never score these
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
_ZYGOTE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_zygote.py")
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
# Parent side
# ----------------------------------------------------------------------------------------------
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
        with open(_ZYGOTE_SOURCE, encoding="utf-8") as handle:
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
