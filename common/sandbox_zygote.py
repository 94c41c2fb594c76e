"""The code of a sandbox zygote (common/sandbox.py's worker process) and what it shares with it.

common/sandbox.py runs this file's source as `python -I -c <source> --zygote CONFIG` (inside
bubblewrap when it is available), so it imports only the standard library and nothing of common/.
The zygote preloads modules, then serves one job at a time: it forks a child that reads the job
from a memfd, applies the limits and runs it (_child), waits for it with a wall-clock deadline
(_serve), kills and reaps everything the job left and empties the scratch directories (_sweep,
_remove_sysv_ipc, _empty_dir). The parent side imports the seccomp filter builder and the few
helpers it shares with the zygote from here. What each mode isolates: common/sandbox.py's docstring.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import time

MEMORY_EXIT_CODE = 121  # the child exits with this when user code raised MemoryError
SETUP_EXIT_CODE = 122  # the child could not apply its limits; the job never ran


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
# Shared with the parent side (common/sandbox.py imports these from here)
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
