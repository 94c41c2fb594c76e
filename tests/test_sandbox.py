"""Tests for common/sandbox.py: hostile programs are contained, reported, and the batch goes on."""
import inspect
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.sandbox import ExecResult, Sandbox, _block_network_in_python, call_function  # noqa: E402

SECRET = "nanoreason-secret-" + uuid.uuid4().hex
MAX_OUTPUT = 64 * 1024


@pytest.fixture(scope="module")
def sandbox():
    os.environ["NANOREASON_SANDBOX_TEST_SECRET"] = SECRET  # set before the zygotes start
    with Sandbox(workers=2, timeout=1.5, memory_mb=256, max_output=MAX_OUTPUT, max_processes=16) as box:
        yield box
    os.environ.pop("NANOREASON_SANDBOX_TEST_SECRET", None)


def processes_of(uids) -> list[int]:
    """Live (non-zombie) processes whose real uid is one of `uids`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            found.append(int(entry))
    return found


def test_plain_runs_stdin_and_calls(sandbox):
    result = sandbox.run("import numpy as np\nprint(int(np.arange(5).sum()), input())", stdin="hello\n")
    assert (result.status, result.stdout, result.returncode) == ("ok", "10 hello\n", 0)
    assert isinstance(result, ExecResult) and result.ok
    called = sandbox.call("def add(a, b):\n    return {'sum': a + b, 'items': [a, b]}", "add", '{"a": 2, "b": 3}')
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


def test_hostile_batch_is_contained(sandbox, tmp_path):
    guarded = tmp_path / "guarded"
    guarded.mkdir()
    (guarded / "keep.txt").write_text("original")
    before = sorted(os.listdir(guarded))
    escape_name = f"/tmp/nanoreason-escape-{uuid.uuid4().hex}"
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]

    hostile = {
        "infinite_loop": "while True:\n    pass",
        "sleep_forever": "import time\ntime.sleep(1000)",
        "fork_bomb": ("import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            os.setsid()\n"
                      "    except OSError:\n        pass"),
        "orphan_daemon": "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\nprint('parent done')",
        "allocate_10gb": "block = bytearray(10 * 1024 ** 3)",
        "files_outside": (
            f"import os, shutil\nd = {str(guarded)!r}\nfor action in (\n"
            f"    lambda: open(d + '/new.txt', 'w').write('x'),\n"
            f"    lambda: os.remove(d + '/keep.txt'),\n"
            f"    lambda: open(d + '/keep.txt', 'w').write('overwritten'),\n"
            f"    lambda: shutil.rmtree(d),\n"
            f"    lambda: open('/etc/nanoreason-escape', 'w').write('x')):\n"
            f"    try:\n        action()\n        print('ACTION OK')\n"
            f"    except OSError as e:\n        print('refused', type(e).__name__)\n"
            f"open({escape_name!r}, 'w').write('private /tmp only')\n"
            f"open('inside.txt', 'w').write('allowed in the working dir')\nprint(open('inside.txt').read())"),
        "network": (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=0.5)\n"
                    f"    print('CONNECTED')\nexcept OSError as e:\n    print('no network', e)"),
        "print_1gb": "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(chunk)",
        "kill_parent": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('still here')",
        "sys_exit_3": "import sys\nsys.exit(3)",
        "sys_exit_0": "import sys\nprint('bye')\nsys.exit(0)",
        "sys_exit_text": "import sys\nsys.exit('fatal text')",
        "os_exit": "import os\nos._exit(7)",
        "recursion": "def f(n):\n    return f(n + 1)\nf(0)",
        "deep_recursion": "import sys\nsys.setrecursionlimit(10 ** 8)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "segfault": "import ctypes\nctypes.string_at(0)",
        "read_environment": (
            "import os\nprint(dict(os.environ))\nfor pid in os.listdir('/proc'):\n    try:\n"
            "        print(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
            "    except OSError:\n        pass"),
    }
    names = []
    codes = []
    for name, code in hostile.items():  # a benign job after each hostile one: the batch must go on
        names += [name, f"after_{name}"]
        codes += [code, f"print('alive after {name}')"]
    started = time.monotonic()
    results = dict(zip(names, sandbox.run_many(codes)))
    assert time.monotonic() - started < 40  # generous: the parent never blocks forever

    for name in hostile:
        after = results[f"after_{name}"]
        assert after.status == "ok" and after.stdout == f"alive after {name}\n", (name, after)
    assert results["infinite_loop"].status == "timeout"
    assert results["sleep_forever"].status == "timeout" and results["sleep_forever"].elapsed < 5
    assert results["fork_bomb"].status in ("timeout", "killed")
    assert results["orphan_daemon"].status == "ok" and results["orphan_daemon"].stdout == "parent done\n"
    assert results["allocate_10gb"].status == "memory"
    files = results["files_outside"]
    assert "ACTION OK" not in files.stdout and "allowed in the working dir" in files.stdout, files
    assert sorted(os.listdir(guarded)) == before and (guarded / "keep.txt").read_text() == "original"
    assert not os.path.exists(escape_name) and not os.path.exists("/etc/nanoreason-escape")
    assert "no network" in results["network"].stdout and "CONNECTED" not in results["network"].stdout
    with pytest.raises(BlockingIOError):
        server.accept()
    server.close()
    flood = results["print_1gb"]
    assert flood.status == "output_limit" and len(flood.stdout) <= MAX_OUTPUT
    assert results["kill_parent"].status == "error" and "still here" not in results["kill_parent"].stdout
    assert (results["sys_exit_3"].status, results["sys_exit_3"].returncode) == ("error", 3)
    assert (results["sys_exit_0"].status, results["sys_exit_0"].stdout) == ("ok", "bye\n")
    assert results["sys_exit_text"].status == "error" and "fatal text" in results["sys_exit_text"].stderr
    assert (results["os_exit"].status, results["os_exit"].returncode) == ("error", 7)
    assert results["recursion"].status == "error" and "RecursionError" in results["recursion"].stderr
    assert results["deep_recursion"].status in ("memory", "crash", "error", "timeout")
    assert results["segfault"].status == "crash" and results["segfault"].returncode == -signal.SIGSEGV
    assert SECRET not in results["read_environment"].stdout
    assert results["read_environment"].stdout.startswith("{}\n")
    # nothing the jobs started is still alive (fork bomb children, the setsid daemon)
    assert processes_of(set(sandbox.uids)) == []
    assert all(worker.proc.poll() is None for worker in sandbox._workers)


def test_dead_worker_is_replaced(sandbox):
    worker = sandbox._workers[0]
    old_pid = worker.proc.pid
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:  # the zygote dies while serving a job
        pending = pool.submit(worker.request, {"code": "import time\ntime.sleep(5)", "timeout": 5, "cpu_time": 6}, 15)
        time.sleep(0.5)
        os.killpg(old_pid, signal.SIGKILL)
        result = pending.result()
    assert result.status == "killed" and "replaced" in result.stderr
    assert worker.proc.pid != old_pid and worker.proc.poll() is None
    results = sandbox.run_many([f"print({i})" for i in range(6)])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    assert processes_of(set(sandbox.uids)) == []


def test_isolation_report_and_fallback_network_block(sandbox):
    iso = sandbox.isolation
    if os.geteuid() == 0:  # this project runs as root; then every measure must be active
        assert iso["network"] == "empty network namespace" and iso["private_tmp"] and iso["uid"] is not None
    # the Python-level fallback (used without namespaces) refuses sockets
    code = inspect.getsource(_block_network_in_python) + (
        "\nimport sys\n_block_network_in_python()\nimport socket\ntry:\n    socket.socket()\n"
        "except PermissionError as e:\n    print('refused:', e)\n")
    result = sandbox.run(code)
    assert result.status == "ok" and result.stdout.startswith("refused: network access is disabled")


def test_call_function_helper_and_bad_arguments():
    result = call_function("def main_solution(n, m):\n    last = 0\n    for i in range(2, n + 1):\n"
                           "        last = (last + m) % i\n    return last", "main_solution", '{"n": 61, "m": 4}',
                           timeout=2.0, memory_mb=128)
    assert result.status == "ok" and result.value == 38
    with pytest.raises(ValueError, match="workers=0"):
        Sandbox(workers=0)


def test_private_tmp_is_emptied_between_jobs():
    with Sandbox(workers=1, timeout=2.0, memory_mb=128) as box:  # one worker: both jobs use the same zygote
        first = box.run("open('/tmp/leftover', 'w').write('x')\nopen('/dev/shm/leftover', 'w').write('x')\nprint('ok')")
        second = box.run("import os\nprint(os.path.exists('/tmp/leftover'), os.path.exists('/dev/shm/leftover'))")
    assert first.stdout == "ok\n" and second.stdout == "False False\n"
