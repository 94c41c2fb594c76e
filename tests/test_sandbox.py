"""Tests for common/sandbox.py: hostile programs are contained, reported, and the batch goes on,
as root and as an unprivileged user; a missing isolation layer is refused loudly."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
import _sandbox_hostile as hostile  # noqa: E402

from common import sandbox as sandbox_module  # noqa: E402
from common.sandbox import (  # noqa: E402
    ExecResult,
    Sandbox,
    SandboxUnavailable,
    call_function,  # noqa: E402
    probe_isolation,
)

SECRET = "nanoreason-secret-" + uuid.uuid4().hex
MAX_OUTPUT = 64 * 1024
FULL = not probe_isolation()["missing"]
needs_full = pytest.mark.skipif(
    not FULL,
    reason="bubblewrap or libseccomp missing: apt-get install "
    "bubblewrap libseccomp2 (.ci/run does)",
)


@pytest.fixture(scope="module")
def sandbox():
    os.environ["NANOREASON_SANDBOX_TEST_SECRET"] = SECRET  # set before the zygotes start
    with Sandbox(
        workers=2,
        timeout=1.5,
        memory_mb=256,
        max_output=MAX_OUTPUT,
        max_processes=16,
        allow_weaker=not FULL,
    ) as box:
        yield box
    os.environ.pop("NANOREASON_SANDBOX_TEST_SECRET", None)


def test_plain_runs_stdin_and_calls(sandbox):
    result = sandbox.run(
        "import numpy as np\nprint(int(np.arange(5).sum()), input())", stdin="hello\n"
    )
    assert (result.status, result.stdout, result.returncode) == ("ok", "10 hello\n", 0)
    assert isinstance(result, ExecResult) and result.ok and not result.infrastructure_failure
    called = sandbox.call(
        "def add(a, b):\n    return {'sum': a + b, 'items': [a, b]}", "add", '{"a": 2, "b": 3}'
    )
    assert called.status == "ok" and called.value == {"sum": 5, "items": [2, 3]}
    assert called.value_json == '{"sum": 5, "items": [2, 3]}'
    not_json = sandbox.call("def f():\n    return {1, 2}", "f", {})
    assert not_json.status == "error" and "JSON" in not_json.stderr
    missing = sandbox.call("x = 1", "main_solution", {})
    assert missing.status == "error" and "main_solution" in missing.stderr
    syntax = sandbox.run("def broken(:\n")
    assert syntax.status == "error" and "SyntaxError" in syntax.stderr
    raised = sandbox.call("def f(n):\n    return 1 // n", "f", {"n": 0})
    assert raised.status == "error" and "ZeroDivisionError" in raised.stderr


def test_hostile_batch_is_contained(sandbox):
    hostile_codes = {
        "infinite_loop": "while True:\n    pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "allocate_10gb": "block = bytearray(10 * 1024 ** 3)",
        "print_1gb": "import sys\nchunk = 'x' * (1 << 20)\n"
        "for _ in range(1024):\n    sys.stdout.write(chunk)",
        "kill_parent": "import os, signal\n"
        "os.kill(os.getppid(), signal.SIGKILL)\nprint('still here')",
        "sys_exit_3": "import sys\nsys.exit(3)",
        "sys_exit_0": "import sys\nprint('bye')\nsys.exit(0)",
        "sys_exit_text": "import sys\nsys.exit('fatal text')",
        "os_exit": "import os\nos._exit(7)",
        "recursion": "def f(n):\n    return f(n + 1)\nf(0)",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 8)\n"
        "def f(n):\n    return f(n + 1)\nf(0)",
        "segfault": "import ctypes\nctypes.string_at(0)",
        "read_environment": (
            "import os\nprint(dict(os.environ))\nfor pid in os.listdir('/proc'):\n    try:\n"
            "        print(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
            "    except OSError:\n        pass"
        ),
    }
    if FULL:  # in a PID namespace this reaches only the job (as the caller without one: everything)
        hostile_codes["kill_everything"] = (
            "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('me')"
        )
    zygotes = [worker.proc.pid for worker in sandbox._workers]
    names, codes = [], []
    for (
        name,
        code,
    ) in hostile_codes.items():  # a benign job after each hostile one: the batch goes on
        names += [name, f"after_{name}"]
        codes += [code, f"print('alive after {name}')"]
    results = dict(zip(names, sandbox.run_many(codes)))
    for name in hostile_codes:
        after = results[f"after_{name}"]
        assert after.status == "ok" and after.stdout == f"alive after {name}\n", (name, after)
    assert results["infinite_loop"].status == "timeout"
    assert results["sleep_forever"].status == "timeout" and results["sleep_forever"].elapsed < 5
    assert results["allocate_10gb"].status == "memory"
    flood = results["print_1gb"]
    assert flood.status == "output_limit" and len(flood.stdout) <= MAX_OUTPUT
    # the zygote (PID 1 of the namespace, or another uid) is out of reach: same workers afterwards
    assert results["kill_parent"].status in ("ok", "error")
    if FULL:  # nothing else in the namespace that it may signal: not even its zygote (PID 1)
        assert "ProcessLookupError" in results["kill_everything"].stderr
    assert (results["sys_exit_3"].status, results["sys_exit_3"].returncode) == ("error", 3)
    assert (results["sys_exit_0"].status, results["sys_exit_0"].stdout) == ("ok", "bye\n")
    assert (
        results["sys_exit_text"].status == "error"
        and "fatal text" in results["sys_exit_text"].stderr
    )
    assert (results["os_exit"].status, results["os_exit"].returncode) == ("error", 7)
    assert (
        results["recursion"].status == "error" and "RecursionError" in results["recursion"].stderr
    )
    assert results["deep_recursion"].status in ("memory", "crash", "error", "timeout")
    assert (
        results["segfault"].status == "crash" and results["segfault"].returncode == -signal.SIGSEGV
    )
    assert SECRET not in results["read_environment"].stdout
    assert results["read_environment"].stdout.startswith("{}\n")
    assert [worker.proc.pid for worker in sandbox._workers] == zygotes
    assert all(worker.proc.poll() is None for worker in sandbox._workers)


class HostBait:
    """What the hostile programs try to reach on the host: a world-writable directory with a
    world-connectable AF_UNIX socket, a TCP server on 127.0.0.1, a process with a marker
    argument."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="nanoreason-bait-")
        os.chmod(self.dir, 0o1777)
        self.tcp = socket.socket()
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(1)
        self.tcp.setblocking(False)
        self.context = hostile.make_context(self.dir, self.tcp.getsockname()[1])
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(self.context["socket_path"])
        os.chmod(self.context["socket_path"], 0o777)
        self.unix.listen(1)
        self.unix.setblocking(False)
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)", self.context["marker"]]
        )

    def failures(self) -> list[str]:
        found = hostile.host_failures(self.context)
        for name, server in (("TCP", self.tcp), ("AF_UNIX", self.unix)):
            try:
                server.accept()
                found.append(f"a job connected to the host's {name} socket")
            except BlockingIOError:
                pass
        return found

    def close(self):
        self.process.kill()
        self.process.wait()
        self.tcp.close()
        self.unix.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def bait():
    made = HostBait()
    yield made
    made.close()


LEAK_KWARGS = {
    "timeout": 3.0,
    "memory_mb": 256,
    "max_output": MAX_OUTPUT,
    "max_processes": 16,
    "tmpfs_mb": 16,
}


def check_leak_batch(report: dict, bait: HostBait):
    assert hostile.job_failures(report["results"], bait.context) == []
    assert bait.failures() == []
    assert report["running_before_close"] >= 2 and report["left_after_close"] == []


@needs_full
def test_every_leak_is_contained_as_the_caller(bait):
    """One hostile program per leak of issue #18 (the caller is root in CI: worker uids)."""
    report = hostile.run_batch(sandbox_module, bait.context, **LEAK_KWARGS)
    assert report["isolation"]["level"] == "full"
    check_leak_batch(report, bait)


def python_for_nobody() -> str | None:
    """An interpreter `nobody` can run (a venv under /root is unreadable to it)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        if (
            candidate
            and os.path.exists(candidate)
            and subprocess.run(
                [
                    "setpriv",
                    "--reuid=65534",
                    "--regid=65534",
                    "--clear-groups",
                    candidate,
                    "-I",
                    "-c",
                    "import ctypes, os, sys\nassert os.access(os.path.realpath(sys.executable), "
                    "os.R_OK)",
                ],
                capture_output=True,
                cwd="/",
            ).returncode
            == 0
        ):
            return candidate
    return None


@needs_full
@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to nobody needs root")
def test_every_leak_is_contained_as_nobody(bait):
    """The same programs with the Sandbox created by uid 65534 (no worker uids: bwrap makes an
    unprivileged user namespace). The repository may be unreadable to nobody (CI clones as root),
    so common/sandbox.py, common/sandbox_zygote.py and the programs are copied to a directory
    nobody can read."""
    python = python_for_nobody()
    if python is None or shutil.which("setpriv") is None:
        pytest.skip(
            "no Python interpreter that uid 65534 can run (and setpriv), e.g. /usr/bin/python3"
        )
    where = tempfile.mkdtemp(prefix="nanoreason-nobody-")
    try:
        os.chmod(where, 0o755)
        os.mkdir(os.path.join(where, "common"))
        os.chmod(os.path.join(where, "common"), 0o755)
        for name in ("__init__.py", "sandbox.py", "sandbox_zygote.py"):
            shutil.copy(ROOT / "common" / name, os.path.join(where, "common", name))
            os.chmod(os.path.join(where, "common", name), 0o644)
        shutil.copy(ROOT / "tests" / "_sandbox_hostile.py", where)
        os.chmod(os.path.join(where, "_sandbox_hostile.py"), 0o644)
        kwargs = dict(LEAK_KWARGS, preload=["json"])  # numpy may be missing for that interpreter
        done = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                python,
                "-I",
                os.path.join(where, "_sandbox_hostile.py"),
                json.dumps(bait.context),
                json.dumps(kwargs),
            ],
            capture_output=True,
            text=True,
            cwd=where,
            timeout=240,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"},
        )
    finally:
        shutil.rmtree(where, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["isolation"]["level"] == "full" and "user" in report["isolation"]["namespaces"]
    assert report["uids"] == [None]
    check_leak_batch(report, bait)


def test_dead_worker_is_an_infrastructure_failure(sandbox):
    worker = sandbox._workers[0]
    old_pid = worker.proc.pid
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # the zygote dies while serving a job
        pending = pool.submit(
            worker.request,
            {"code": "import time\ntime.sleep(5)"},
            {"timeout": 5, "cpu_time": 6},
            15,
            MAX_OUTPUT,
        )
        time.sleep(0.5)
        signal.pidfd_send_signal(worker.zygote_pidfd, signal.SIGKILL)
        result = pending.result()
    assert result.status == "sandbox_error" and result.infrastructure_failure
    assert "replaced" in result.stderr
    assert worker.proc.pid != old_pid and worker.proc.poll() is None
    results = sandbox.run_many([f"print({i})" for i in range(6)])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]


@needs_full
def test_isolation_report_full(sandbox):
    iso = sandbox.isolation
    assert iso["level"] == "full" and iso["missing"] == []
    assert {"pid", "mount", "ipc", "net"} <= set(iso["namespaces"])
    assert iso["network"] == "empty network namespace" and iso["seccomp"]
    assert iso["nested_userns"].startswith("refused")
    if os.geteuid() == 0:
        assert all(sandbox_module.UID_BASE <= uid for uid in sandbox.uids)
        assert "user" not in iso["namespaces"]  # root runs bwrap privileged, jobs as the worker uid


def without(monkeypatch, *layers):
    """Pretend the machine lacks some layers (the refusal and the weaker modes are real code
    paths)."""
    real = probe_isolation()
    fake = {
        "bubblewrap": None if "bubblewrap" in layers else real["bubblewrap"],
        "bpf": None if "seccomp" in layers else real["bpf"],
    }
    fake["missing"] = [
        name
        for name, key in (("bubblewrap", "bubblewrap"), ("seccomp", "bpf"))
        if fake[key] is None
    ]
    monkeypatch.setattr(sandbox_module, "probe_isolation", lambda: fake)


NETWORK_PROBE = (
    "import ctypes, socket\nlibc = ctypes.CDLL(None, use_errno=True)\n"
    "for name, make in (('socket', lambda: socket.socket()),\n"
    "                   ('_socket', lambda: socket._socket.socket()),\n"
    "                   ('libc', lambda: libc.socket(2, 1, 0))):\n"
    "    try:\n        made = make()\n        print(name, 'made' if made != -1 else 'refused')\n"
    "    except OSError:\n        print(name, 'refused')\n"
)


def test_missing_layer_is_refused_unless_allow_weaker(monkeypatch):
    without(monkeypatch, "bubblewrap")
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap") as refused:
        Sandbox(workers=1)
    assert "allow_weaker" in str(refused.value) and "--sandbox_allow_weaker" in str(refused.value)
    with Sandbox(workers=1, timeout=2.0, memory_mb=128, allow_weaker=True) as box:
        iso = box.isolation
        assert iso["level"] == "weaker" and "bubblewrap" in iso["missing"]
        assert iso["namespaces"] == [] and iso["filesystem"].startswith("host filesystem")
        probe = box.run(NETWORK_PROBE)
        nested = box.run(hostile.hostile_programs(hostile.make_context("/", 1))["nested_userns"])
    if iso[
        "seccomp"
    ]:  # libseccomp: socket() of every family refused by the kernel, even via ctypes
        assert probe.stdout == "socket refused\n_socket refused\nlibc refused\n", probe
        assert nested.stdout == "unshare -1\nclone -1\n"
    else:
        assert probe.stdout.startswith("socket refused\n_socket refused\n"), probe


def test_python_level_fallback_blocks_the_c_socket_module(monkeypatch):
    """No bwrap, no libseccomp: the last resort must also cover socket._socket (issue #18)."""
    without(monkeypatch, "bubblewrap", "seccomp")
    with Sandbox(workers=1, timeout=2.0, memory_mb=128, allow_weaker=True) as box:
        assert box.isolation["network"] == "python-level socket block"
        assert box.isolation["missing"] == ["bubblewrap", "seccomp"]
        probe = box.run(NETWORK_PROBE)
    assert probe.stdout.startswith("socket refused\n_socket refused\n"), probe


@pytest.mark.skipif(os.geteuid() != 0, reason="worker uids are claimed only as root")
def test_worker_uids_are_free_and_outside_systemd_ranges():
    assert not sandbox_module._uid_is_free(0)  # in the password database
    sleeper = subprocess.Popen(
        [
            "setpriv",
            f"--reuid={sandbox_module.UID_BASE + 7}",
            f"--regid={sandbox_module.UID_BASE + 7}",
            "--clear-groups",
            "sleep",
            "30",
        ]
    )
    try:
        time.sleep(0.3)
        assert not sandbox_module._uid_is_free(sandbox_module.UID_BASE + 7)  # a process runs as it
    finally:
        sleeper.kill()
        sleeper.wait()
    uid, lock = sandbox_module._claim_uid()
    try:
        assert sandbox_module._uid_is_free(uid)
        assert (
            not 61184 <= uid <= 65519 and not 524288 <= uid <= 1879048191
        )  # systemd dynamic/container
        assert not 2147352576 <= uid <= 2147418111  # systemd's foreign range
    finally:
        os.close(lock)


def test_call_function_helper_and_bad_arguments():
    result = call_function(
        "def main_solution(n, m):\n    last = 0\n    for i in range(2, n + 1):\n"
        "        last = (last + m) % i\n    return last",
        "main_solution",
        '{"n": 61, "m": 4}',
        timeout=2.0,
        memory_mb=128,
        allow_weaker=not FULL,
    )
    assert result.status == "ok" and result.value == 38
    with pytest.raises(ValueError, match="workers=0"):
        Sandbox(workers=0)


@needs_full
def test_scratch_is_private_and_emptied_between_jobs():
    name = f"leftover-{uuid.uuid4().hex}"
    with Sandbox(workers=1, timeout=2.0, memory_mb=128) as box:  # one worker: the same zygote
        first = box.run(
            f"open('/tmp/{name}', 'w').write('x')\nopen('/dev/shm/{name}', 'w').write('x')\n"
            "print('ok')"
        )
        second = box.run(
            f"import os\nprint(os.path.exists('/tmp/{name}'), os.path.exists('/dev/shm/{name}'))"
        )
    assert first.stdout == "ok\n" and second.stdout == "False False\n"
    assert not os.path.exists(f"/tmp/{name}") and not os.path.exists(f"/dev/shm/{name}")
