"""Run untrusted (model-written) Python with limits, from a pool of pre-forked "zygote" workers.

Used by codeio.py to execute generated functions and to verify predicted inputs; anything that runs
code it did not write should go through here. The module imports only the standard library, because
the same file is started as the zygote process (`python -I common/sandbox.py --zygote CONFIG`).

How it works
    Sandbox(workers=N) starts N zygote processes (empty environment, own session, `python -I`). Each
    zygote sets up its isolation once, imports the `preload` modules (numpy, json, math, ...), and then
    serves one job at a time: it forks a fresh child per job, waits for it with a wall-clock deadline
    (pidfd + select), kills everything the child left behind, and answers with an ExecResult. Forking
    a warm zygote costs a few milliseconds instead of a fresh interpreter plus imports
    (bench/sandbox.py measures it). A zygote that dies or stops answering is killed and replaced; the
    job it was running is reported as "killed" and the batch goes on.

What is isolated (as root, which is how this project runs; `Sandbox.isolation` reports what is active)
    - Processes: each job runs in its own session/process group under a dedicated unprivileged uid
      (one uid per worker, claimed with a file lock so two Sandboxes never share one) with
      PR_SET_NO_NEW_PRIVS. After every job the zygote sends SIGKILL to every process of that uid
      (kill(-1) from a helper running as the uid), to the job's process group, and to every descendant
      (the zygote is a child subreaper, so orphans re-parent to it), then reaps them. Fork bombs hit
      RLIMIT_NPROC (`max_processes`, per uid) and are then swept, even children that called setsid().
    - Signals: the job cannot signal its parent or other root processes (different uid).
    - Limits: RLIMIT_CPU (cpu_time), wall clock (timeout, SIGKILL), RLIMIT_AS (memory_mb on top of the
      zygote's own address space), RLIMIT_FSIZE (max_output bytes per file, also bounds stdout/stderr,
      which go to files), RLIMIT_NOFILE, RLIMIT_CORE=0.
    - Network: a new, empty network namespace (unshare CLONE_NEWNET: no interfaces but a down
      loopback), so nothing, not even 127.0.0.1 of the host, is reachable.
    - Files: a new mount namespace where /tmp, /var/tmp and /dev/shm are private tmpfs mounts
      (`tmpfs_mb`, in RAM, invisible to the host) that are emptied after every job; the job's working
      directory is a fresh directory in that /tmp. Directories on the way to the Python installation that "other"
      cannot enter (e.g. /root for pyenv) are replaced by an empty tmpfs with only the installation
      bound back in, so the job can import the standard library but sees nothing else of /root.
      Unix permissions of the dropped uid do the rest: it cannot write root-owned files.
    - Environment: empty (no variable of the parent is passed); /proc/<pid>/environ of root processes
      is unreadable for the job's uid.
What is NOT isolated (it is not a VM or a seccomp jail)
    - The job can READ every file that is world-readable (the repository, /etc, ...), list processes
      in /proc, and write to world-writable directories other than /tmp, /var/tmp, /dev/shm.
    - It shares the kernel: kernel exploits, CPU caches, and timing side channels are out of scope.
      No seccomp filter, no cgroup (memory is bounded by RLIMIT_AS, not by a cgroup; a job can still
      spend `max_processes` x memory_mb in total until the sweep).
    - Without root: no uid drop, no namespaces unless unprivileged user namespaces work; the network
      is then blocked only at the Python level (socket module replaced; ctypes can still reach libc),
      RLIMIT_NPROC is not set, and orphans of a zygote that itself died can survive.
"""
from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import sys
import time

STATUSES = ("ok", "error", "timeout", "memory", "output_limit", "crash", "killed", "sandbox_error")
MEMORY_EXIT_CODE = 121  # the child exits with this when user code raised MemoryError
SETUP_EXIT_CODE = 122  # the child could not apply its limits; the job never ran
DEFAULT_PRELOAD = (  # the CodeI/O verifier prefixes ~40 stdlib/numpy imports (§1.4); importing them once
    "json", "math", "random", "re", "string", "collections", "itertools", "functools", "heapq",
    "bisect", "copy", "decimal", "fractions", "statistics", "operator", "datetime", "typing",
    "dataclasses", "traceback", "socket", "numpy",
)


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


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
class _Worker:
    """One zygote process and its pipes; used by one thread at a time."""

    def __init__(self, config: dict):
        self.config = config
        self.proc = None
        self.isolation: dict = {}
        self.start()

    def start(self):
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), "--zygote", json.dumps(self.config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={}, cwd="/", start_new_session=True, close_fds=True,
        )
        self._buffer = b""
        hello = self._read_line(time.monotonic() + 60.0)
        if hello is None:
            self.kill()
            raise RuntimeError("sandbox zygote did not start (no 'ready' line within 60 s)")
        self.isolation = json.loads(hello)["isolation"]

    def _read_line(self, deadline: float) -> bytes | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None  # the zygote died
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def request(self, job: dict, wait_s: float) -> ExecResult:
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._read_line(time.monotonic() + wait_s)
        except (BrokenPipeError, OSError):
            line = None
        if line is None:  # the zygote died or hangs: never block, replace it
            self.kill()
            self.start()
            return ExecResult("killed", stderr="sandbox worker died or stopped answering; replaced")
        reply = json.loads(line)
        return ExecResult(**reply)

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def _claim_uid(first: int = 61000, span: int = 3000) -> tuple[int, int]:
    """An unused uid for one worker, held by an exclusive flock (released when the fd closes)."""
    import fcntl

    lock_dir = "/tmp/nanoreason-sandbox-uids"
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    start = os.getpid() % span
    for offset in range(span):
        uid = first + (start + offset) % span
        fd = os.open(f"{lock_dir}/{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return uid, fd
        except BlockingIOError:
            os.close(fd)
    raise RuntimeError(f"no free sandbox uid in [{first}, {first + span})")


class Sandbox:
    """A pool of zygote workers. Thread-safe: run() from several threads uses several workers.

    Args:
        workers: parallel jobs (one zygote each).
        timeout: wall-clock seconds per job (default for run/call; per-call override).
        cpu_time: RLIMIT_CPU seconds per job; default ceil(timeout) + 1.
        memory_mb: address space a job may add on top of the zygote's (RLIMIT_AS).
        max_output: bytes kept of stdout/stderr, and the largest file a job may write (RLIMIT_FSIZE).
        max_processes: RLIMIT_NPROC of the job's uid (root only).
        tmpfs_mb: size of the private /tmp (and /var/tmp, /dev/shm) of the jobs.
        preload: modules imported once in the zygote so jobs import them for free.
    """

    def __init__(self, workers: int = 4, timeout: float = 5.0, cpu_time: float | None = None,
                 memory_mb: int = 1024, max_output: int = 1 << 20, max_processes: int = 64,
                 tmpfs_mb: int = 256, preload: tuple[str, ...] = DEFAULT_PRELOAD):
        import queue

        if workers < 1 or timeout <= 0 or memory_mb < 16 or max_output < 1:
            raise ValueError(f"bad Sandbox arguments: workers={workers} timeout={timeout} "
                             f"memory_mb={memory_mb} max_output={max_output}")
        self.timeout = float(timeout)
        self.cpu_time = cpu_time
        self._owner_pid = os.getpid()  # a forked copy of this object (e.g. a DataLoader worker) must not kill the pool
        self._uid_locks: list[int] = []
        self._workers: list[_Worker] = []
        self._idle: queue.Queue = queue.Queue()
        as_root = os.geteuid() == 0
        try:
            for _ in range(workers):
                uid = None
                if as_root:
                    uid, lock_fd = _claim_uid()
                    self._uid_locks.append(lock_fd)
                config = dict(uid=uid, memory_mb=memory_mb, max_output=max_output,
                              max_processes=max_processes, tmpfs_mb=tmpfs_mb, preload=list(preload))
                worker = _Worker(config)
                self._workers.append(worker)
                self._idle.put(worker)
        except BaseException:
            self.close()
            raise

    @property
    def isolation(self) -> dict:
        """What the zygotes managed to set up (network namespace, mount namespace, uid drop, ...)."""
        return dict(self._workers[0].isolation) if self._workers else {}

    @property
    def uids(self) -> list[int | None]:
        return [worker.config["uid"] for worker in self._workers]

    def _submit(self, job: dict, timeout: float | None) -> ExecResult:
        timeout = self.timeout if timeout is None else float(timeout)
        job["timeout"] = timeout
        job["cpu_time"] = self.cpu_time if self.cpu_time is not None else int(timeout) + 1
        worker = self._idle.get()
        try:  # the zygote enforces `timeout`; the parent's own deadline only catches a hung zygote
            return worker.request(job, wait_s=timeout + 10.0)
        finally:
            self._idle.put(worker)

    def run(self, code: str, stdin: str | None = None, timeout: float | None = None) -> ExecResult:
        """Execute `code` as a __main__ script; stdin text optional."""
        return self._submit({"code": code, "stdin": stdin}, timeout)

    def call(self, code: str, func_name: str, kwargs_json: str | dict,
             timeout: float | None = None) -> ExecResult:
        """Execute `code`, then `func_name(**json.loads(kwargs_json))`; the JSON-serialised return
        value comes back in `.value` / `.value_json` (a non-JSON result is status "error")."""
        if not isinstance(kwargs_json, str):
            kwargs_json = json.dumps(kwargs_json)
        return self._submit({"code": code, "call": func_name, "kwargs_json": kwargs_json}, timeout)

    def _parallel(self, fn, argument_lists):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(self._workers)) as pool:
            return list(pool.map(lambda args: fn(*args), argument_lists))

    def run_many(self, codes: list[str], stdins: list | None = None,
                 timeout: float | None = None) -> list[ExecResult]:
        stdins = stdins if stdins is not None else [None] * len(codes)
        return self._parallel(self.run, [(c, s, timeout) for c, s in zip(codes, stdins)])

    def call_many(self, calls: list[tuple[str, str, str | dict]],
                  timeout: float | None = None) -> list[ExecResult]:
        """calls: (code, func_name, kwargs) triples, run in parallel, results in order."""
        return self._parallel(self.call, [(c, f, k, timeout) for c, f, k in calls])

    def close(self):
        if os.getpid() != self._owner_pid:
            return
        for worker in self._workers:
            worker.kill()
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


def call_function(code: str, func_name: str, kwargs_json: str | dict, sandbox: Sandbox | None = None,
                  timeout: float = 5.0, **sandbox_kwargs) -> ExecResult:
    """One-off helper: `func_name(**kwargs)` from `code` in `sandbox` (or a temporary 1-worker one)."""
    if sandbox is not None:
        return sandbox.call(code, func_name, kwargs_json, timeout=timeout)
    with Sandbox(workers=1, timeout=timeout, **sandbox_kwargs) as temporary:
        return temporary.call(code, func_name, kwargs_json)


# ----------------------------------------------------------------------------------------------
# Zygote side (runs in its own `python -I` process; standard library only)
# ----------------------------------------------------------------------------------------------
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36


def _libc():
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _mount(libc, source, target, fstype, flags, data=None) -> None:
    import ctypes

    enc = lambda s: s.encode() if isinstance(s, str) else s  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target} failed")


def _install_paths() -> set[str]:
    """The Python installation a job needs: the interpreter's prefix, stdlib and site-packages."""
    import sysconfig

    return {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sysconfig.get_paths()["stdlib"],
                                          sysconfig.get_paths()["purelib"]) if os.path.isdir(p)}


def _private_tmpfs(libc, mount_point: str, tmpfs_mb: int) -> None:
    """Mount an empty tmpfs on mount_point, keeping any part of the Python installation that lives
    under it (a virtual environment in /tmp, as CI clones have) bound back at the same path."""
    inside = sorted(p for p in _install_paths() if p.startswith(mount_point.rstrip("/") + "/"))
    inside = [p for p in inside if not any(p.startswith(q + "/") for q in inside if q != p)]
    handles = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in inside]
    _mount(libc, "tmpfs", mount_point, "tmpfs", 0, f"size={tmpfs_mb}m,mode=1777")
    for path, fd in handles:  # /proc/self/fd/N still names the directory of the now-hidden mount
        os.makedirs(path, mode=0o755, exist_ok=True)
        _mount(libc, f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
        os.close(fd)


def _expose_python_install(libc, tmpfs_mb: int) -> list[str]:
    """Replace each directory that 'other' cannot enter on the way to the Python installation
    (e.g. /root when Python lives in /root/.pyenv) by an empty tmpfs, binding only the installation
    back in, so a job under the dropped uid can import the standard library and nothing else."""

    needed = _install_paths()
    blocked: dict[str, set[str]] = {}
    for path in sorted(needed):
        parts = path.split("/")
        for depth in range(2, len(parts) + 1):
            ancestor = "/".join(parts[:depth])
            if not os.stat(ancestor).st_mode & 0o001:
                blocked.setdefault(ancestor, set()).add(path)
                break
    hidden = []
    for index, (ancestor, paths) in enumerate(sorted(blocked.items())):
        keep = [p for p in sorted(paths) if not any(p.startswith(q + "/") for q in paths if q != p)]
        staged = []
        for k, path in enumerate(keep):
            stage = f"/tmp/.sandbox-stage-{index}-{k}"
            os.makedirs(stage, exist_ok=True)
            _mount(libc, path, stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, path))
        _mount(libc, "tmpfs", ancestor, "tmpfs", 0, f"size={tmpfs_mb}m,mode=0755")
        for stage, path in staged:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(libc, stage, path, None, _MS_MOVE)
            os.rmdir(stage)
        hidden.append(ancestor)
    return hidden


def _zygote_setup(config: dict) -> dict:
    """Namespaces and mounts, once per zygote. Returns what is active (reported to the parent)."""
    iso = {"network": "python-level socket block", "private_tmp": False, "uid": None,
           "hidden_dirs": [], "subreaper": False}
    libc = _libc()
    as_root = os.geteuid() == 0
    flags = _CLONE_NEWNET | _CLONE_NEWNS | (0 if as_root else _CLONE_NEWUSER)
    if libc.unshare(flags) == 0:
        iso["network"] = "empty network namespace"
        try:
            _mount(libc, "none", "/", None, _MS_REC | _MS_PRIVATE)  # nothing propagates to the host
            for path in ("/tmp", "/var/tmp", "/dev/shm"):
                if os.path.isdir(path):
                    _private_tmpfs(libc, path, config["tmpfs_mb"])
            iso["private_tmp"] = True
            if as_root and config["uid"] is not None:
                iso["hidden_dirs"] = _expose_python_install(libc, config["tmpfs_mb"])
        except OSError as error:
            iso["mount_error"] = str(error)
    elif libc.unshare(_CLONE_NEWNET | (0 if as_root else _CLONE_NEWUSER)) == 0:
        iso["network"] = "empty network namespace"
    iso["subreaper"] = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    iso["uid"] = config["uid"] if as_root else None
    return iso


def _block_network_in_python():
    """Fallback when no network namespace could be made: make every socket constructor raise."""
    import socket

    def refuse(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    for name in ("socket", "create_connection", "socketpair", "fromfd", "create_server"):
        setattr(socket, name, refuse)
    sys.modules["_socket"] = None  # a fresh `import _socket` now fails


def _child(job: dict, config: dict, iso: dict, libc, fds: dict, address_space: int) -> None:
    """Runs in the forked child: apply limits, drop privileges, execute the job, never return."""
    import builtins
    import resource
    import traceback

    exit_code = 0
    try:
        os.setsid()
        for target, name in ((0, "stdin"), (1, "stdout"), (2, "stderr"), (3, "result")):
            os.dup2(fds[name], target)
        os.closerange(4, 65536)  # the protocol pipes and every other fd of the zygote
        os.chdir(job["workdir"])
        cpu = max(1, int(job["cpu_time"]))
        limits = [(resource.RLIMIT_CPU, cpu, cpu + 1),
                  (resource.RLIMIT_AS, address_space, address_space),
                  (resource.RLIMIT_FSIZE, config["max_output"], config["max_output"]),
                  (resource.RLIMIT_NOFILE, 256, 256), (resource.RLIMIT_CORE, 0, 0)]
        uid = iso["uid"]
        if uid is not None:  # RLIMIT_NPROC is per uid and ignored for root, so only with a uid drop
            limits.append((resource.RLIMIT_NPROC, config["max_processes"], config["max_processes"]))
        for kind, soft, hard in limits:
            resource.setrlimit(kind, (soft, hard))
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.environ.clear()  # also unsetenv() of every variable
        if iso["network"] != "empty network namespace":
            _block_network_in_python()
        sys.stdin = open(0, "r", closefd=False)
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
                view = view[os.write(3, view):]
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


def _sweep(uid: int | None, process_group: int | None) -> None:
    """Kill everything a job may have left: its process group, every process of its uid, every
    descendant of the zygote; then reap (the zygote is a subreaper, so orphans are its children)."""
    if process_group is not None:
        try:
            os.killpg(process_group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if uid is not None:
        helper = os.fork()
        if helper == 0:  # kill(-1) as the job's uid: every process of that uid, whatever its session
            try:
                os.setuid(uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:
                pass
            os._exit(0)
        os.waitpid(helper, 0)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        for pid in (_descendants() if uid is None else []):  # with a uid, kill(-1) got them all
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


def _read_capped(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _run_job(job: dict, config: dict, iso: dict, libc, address_space: int) -> dict:
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="job-", dir="/tmp")
    uid = iso["uid"]
    if uid is not None:
        os.chown(workdir, uid, uid)
    job["workdir"] = workdir
    files = {"stdout": "/stdout", "stderr": "/stderr", "result": "/result"}
    io_dir = tempfile.mkdtemp(prefix="io-", dir="/tmp")  # mode 0700: the job cannot touch these files
    fds = {name: os.open(io_dir + suffix, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
           for name, suffix in files.items()}
    if job.get("stdin") is not None:
        with open(io_dir + "/stdin", "w") as handle:
            handle.write(job["stdin"])
        fds["stdin"] = os.open(io_dir + "/stdin", os.O_RDONLY)
    else:
        fds["stdin"] = os.open(os.devnull, os.O_RDONLY)
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(job, config, iso, libc, fds, address_space)
    for fd in fds.values():
        os.close(fd)
    timed_out = False
    status_word = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    deadline = start + job["timeout"]
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
        if pidfd is not None:
            select.select([pidfd], [], [], remaining)
        else:
            time.sleep(min(remaining, 0.001))
    elapsed = time.monotonic() - start
    if pidfd is not None:
        os.close(pidfd)
    _sweep(uid, pid)
    cap = config["max_output"]
    reply = {"stdout": _read_capped(io_dir + "/stdout", cap), "stderr": _read_capped(io_dir + "/stderr", cap),
             "elapsed": round(elapsed, 6), "value": None, "value_json": None}
    if os.WIFSIGNALED(status_word):
        number = os.WTERMSIG(status_word)
        reply["returncode"] = -number
        reply["status"] = ("timeout" if timed_out or number == signal.SIGXCPU else
                           "output_limit" if number == signal.SIGXFSZ else
                           "crash" if number in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT,
                                                 signal.SIGILL, signal.SIGFPE) else "killed")
    else:
        code = os.WEXITSTATUS(status_word)
        reply["returncode"] = code
        reply["status"] = {0: "ok", MEMORY_EXIT_CODE: "memory", SETUP_EXIT_CODE: "sandbox_error"}.get(code, "error")
        if timed_out:
            reply["status"] = "timeout"
    if reply["status"] == "ok" and job.get("call"):
        text = _read_capped(io_dir + "/result", cap + 1)
        if len(text) > cap or not text:
            reply["status"] = "output_limit" if text else "error"
        else:
            reply["value_json"] = text
            try:
                reply["value"] = json.loads(text)
            except ValueError:
                reply["status"] = "error"
                reply["stderr"] += "\nsandbox: the result is not valid JSON"
    if reply["status"] in ("ok", "error") and max(os.path.getsize(io_dir + "/stdout"),
                                                  os.path.getsize(io_dir + "/stderr")) >= cap:
        # stdout/stderr reached RLIMIT_FSIZE (Python ignores SIGXFSZ, so the write raised EFBIG)
        reply["status"] = "output_limit"
    shutil.rmtree(workdir, ignore_errors=True)
    shutil.rmtree(io_dir, ignore_errors=True)
    if iso["private_tmp"]:  # the next job must not see (or be starved by) what this one left in /tmp
        install = _install_paths()
        for scratch in ("/tmp", "/var/tmp", "/dev/shm"):
            for entry in os.scandir(scratch) if os.path.isdir(scratch) else []:
                if any(p == entry.path or p.startswith(entry.path + "/") for p in install):
                    continue  # leads to the bound-in Python installation (root-owned, not the job's)
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
    return reply


def _zygote_main(config: dict) -> None:
    import importlib

    protocol_in, protocol_out = os.dup(0), os.dup(1)  # keep the pipes off fds 0-3 of the children
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = "1"  # threads started before fork() would be missing in the child
    iso = _zygote_setup(config)
    iso["preloaded"] = []
    for module in config["preload"]:
        try:
            importlib.import_module(module)
            iso["preloaded"].append(module)
        except Exception:
            pass
    os.environ.clear()
    libc = _libc()
    if iso["uid"] is not None:
        _sweep(iso["uid"], None)  # leftovers of a previous zygote of this uid that died mid-job
    with open("/proc/self/status") as handle:
        vm_kb = int(next(line for line in handle if line.startswith("VmSize:")).split()[1])
    address_space = vm_kb * 1024 + config["memory_mb"] * (1 << 20)
    reader = os.fdopen(protocol_in, "rb")
    os.write(protocol_out, json.dumps({"isolation": iso}).encode() + b"\n")
    for line in reader:
        job = json.loads(line)
        try:
            reply = _run_job(job, config, iso, libc, address_space)
        except Exception as error:  # a zygote bug must not kill the pool: report it
            reply = {"status": "sandbox_error", "stderr": f"zygote: {error!r}", "elapsed": 0.0}
        payload = json.dumps(reply).encode() + b"\n"
        view = memoryview(payload)
        while view:
            view = view[os.write(protocol_out, view):]


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--zygote":
    _zygote_main(json.loads(sys.argv[2]))
