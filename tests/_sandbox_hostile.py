"""Hostile programs for common/sandbox.py, one per leak of issue #18, shared by the test run as root
(tests/test_sandbox.py) and the one that drops to `nobody` (this file is then run as a script, with
a copy of common/sandbox.py and common/sandbox_zygote.py in common/ beside it, because the
repository may sit in a directory nobody cannot read). Standard library only.

Each program tries to leave something behind or reach outside; `job_failures` checks what the job
itself reported, `host_failures` checks the host afterwards. Both return messages, [] = contained.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

CLONE_NEWUSER = 0x10000000


def make_context(base_dir: str, port: int) -> dict:
    """Names of the things the programs try to reach; base_dir is a world-writable host
    directory."""
    tag = os.urandom(8).hex()
    return {
        "world_dir": base_dir,
        "socket_path": os.path.join(base_dir, "host.sock"),
        "port": port,
        "shm_key": int.from_bytes(os.urandom(3), "big") + 0x1000,
        "marker": f"host-marker-{tag}",
        "secret": f"nanoreason-job-secret-{os.urandom(16).hex()}",
        "tag": tag,
    }


def hostile_programs(ctx: dict) -> dict[str, str]:
    """name -> code. Run in this order in ONE worker (memory_of_previous_job needs the same
    zygote)."""
    leave = [
        f"/run/lock/nanoreason-{ctx['tag']}",
        f"/var/tmp/nanoreason-{ctx['tag']}",
        f"/dev/shm/nanoreason-{ctx['tag']}",
        f"{ctx['world_dir']}/left-{ctx['tag']}",
        f"{os.path.expanduser('~')}/nanoreason-{ctx['tag']}",
        f"/nanoreason-{ctx['tag']}",
    ]
    return {
        # a file outside the job's scratch dirs outlives the job (world-writable host directories)
        "files_outside": (
            f"for path in {leave!r}:\n    try:\n        open(path, 'w').write('x')\n"
            f"        print('WROTE', path)\n    except OSError as e:\n        print('refused', "
            f"path, e.errno)\n"
            "open('inside.txt', 'w').write('allowed in the working "
            "dir')\nprint(open('inside.txt').read())"
        ),
        # many small files: RLIMIT_FSIZE bounds one file, not their number; the scratch tmpfs is
        # sized
        "fill_disk": (
            "import errno\nblock = b'x' * (1 << 15)\ncount = 0\ntry:\n    while count < 4000:\n"
            "        with open(f'f{count}', 'wb') as f:\n            f.write(block)\n        count "
            "+= 1\n"
            "except OSError as e:\n    print('stopped', errno.errorcode[e.errno], count)"
        ),
        "after_fill_disk": (  # what is in /tmp but its own dir and the way to a Python under /tmp
            "import os, sys\nmine = {os.path.basename(os.getcwd())}\n"
            "for path in (sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)):\n"
            "    if path.startswith('/tmp/'):\n        mine.add(path.split('/')[2])\n"
            "print('scratch', sorted(set(os.listdir('/tmp')) - mine))"
        ),
        # scratch the zygote cannot empty (or use: chmod 000 on what it owns)
        "locked_scratch": (
            "import os\nfor top in ('/tmp', '/dev/shm'):\n    os.makedirs(top + '/locked/deep', "
            "exist_ok=True)\n"
            "    open(top + '/locked/deep/f', 'w').write('x')\n    os.chmod(top + '/locked/deep', "
            "0)\n"
            "    os.chmod(top + '/locked', 0)\n    try:\n        os.chmod(top, 0)\n"
            "    except OSError:\n        pass\nprint('locked')"
        ),
        "after_locked_scratch": (
            "import os\nprint(os.path.exists('/tmp/locked'), os.path.exists('/dev/shm/locked'))"
        ),
        # a connection to an AF_UNIX socket at a filesystem path
        "unix_socket": (
            f"import socket\ntry:\n    s = socket.socket(socket.AF_UNIX)\n    s.settimeout(0.5)\n"
            f"    s.connect({ctx['socket_path']!r})\n    print('CONNECTED')\n"
            f"except OSError as e:\n    print('refused', e)"
        ),
        # a SysV shared-memory segment survives the job (and is found by the next one)
        "sysv_shm": (
            f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"ident = libc.shmget({ctx['shm_key']}, 4096, 0o1666)\nprint('shmget', ident >= 0)"
        ),
        "after_sysv_shm": (
            f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('found', libc.shmget({ctx['shm_key']}, 0, 0o666) >= 0)"
        ),
        # a nested user namespace (the way to new capabilities inside the sandbox)
        "nested_userns": (
            f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('unshare', libc.unshare({CLONE_NEWUSER}))\n"
            f"pid = libc.syscall(56, {CLONE_NEWUSER} | 17, 0, 0, 0, 0)  # "
            f"clone(CLONE_NEWUSER|SIGCHLD)\n"
            f"if pid == 0:\n    os._exit(0)\nprint('clone', -1 if pid < 0 else 0)"
        ),
        # the previous job's code is still in memory (every job a fork of a zygote that read it)
        "memory_plant": f"secret = {ctx['secret']!r}\nprint('planted', len(secret))",
        "memory_of_previous_job": (
            "import re\npattern = re.compile(rb'nanoreason-job-secret-[0-9a-f]{32}')\nfound = 0\n"
            "mem = open('/proc/self/mem', 'rb', 0)\nfor line in open('/proc/self/maps'):\n"
            "    fields = line.split()\n    if 'rw' not in fields[1] or (len(fields) > 5 and "
            "not fields[5].startswith('[')):\n        continue\n"
            "    start, end = (int(x, 16) for x in fields[0].split('-'))\n    try:\n"
            "        mem.seek(start)\n        found += len(pattern.findall(mem.read(end - "
            "start)))\n"
            "    except (OSError, ValueError, OverflowError):\n        pass\nprint('found', found)"
        ),
        # the command lines of every process on the machine
        "other_processes": (
            f"import os\nseen = 0\nfor pid in os.listdir('/proc'):\n    try:\n"
            f"        seen += {ctx['marker']!r}.encode() in open(f'/proc/{{pid}}/cmdline', "
            f"'rb').read()\n"
            f"    except OSError:\n        pass\nprint('seen', seen)"
        ),
        # the network of the host (a listening TCP socket on 127.0.0.1)
        "network": (
            f"import socket\ntry:\n    s = socket.socket()\n    s.settimeout(0.5)\n"
            f"    s.connect(('127.0.0.1', {ctx['port']}))\n"
            f"    print('CONNECTED')\nexcept OSError as e:\n    print('no network', e)"
        ),
        # a daemon that outlives its job (new session), and a fork bomb
        "orphan_daemon": (
            "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
            "print('parent done')"
        ),
        "fork_bomb": (
            "import os\nwhile True:\n    try:\n        if os.fork() == 0:\n            "
            "os.setsid()\n"
            "    except OSError:\n        pass"
        ),
        "after_fork_bomb": "print('alive')",
    }


def job_failures(results: dict, ctx: dict) -> list[str]:
    """What the jobs reported; `results` maps a program name to ExecResult fields (a dict)."""
    failures = []

    def expect(condition: bool, name: str):
        if not condition:
            failures.append(f"{name}: {results[name]}")

    out = {name: r["stdout"] for name, r in results.items()}
    wrote = [
        line.split()[1] for line in out["files_outside"].splitlines() if line.startswith("WROTE")
    ]
    expect(
        wrote in ([], [f"/dev/shm/nanoreason-{ctx['tag']}"])  # its own private /dev/shm at most
        and "allowed in the working dir" in out["files_outside"],
        "files_outside",
    )
    expect(out["fill_disk"].startswith("stopped ENOSPC"), "fill_disk")
    expect(out["after_fill_disk"] == "scratch []\n", "after_fill_disk")
    expect(out["after_locked_scratch"] == "False False\n", "after_locked_scratch")
    expect(out["unix_socket"].startswith("refused"), "unix_socket")
    expect(out["after_sysv_shm"] == "found False\n", "after_sysv_shm")
    expect(out["nested_userns"] == "unshare -1\nclone -1\n", "nested_userns")
    expect(out["memory_plant"] == "planted 54\n", "memory_plant")
    expect(out["memory_of_previous_job"] == "found 0\n", "memory_of_previous_job")
    expect(out["other_processes"] == "seen 0\n", "other_processes")
    expect(out["network"].startswith("no network"), "network")
    expect(
        results["orphan_daemon"]["status"] == "ok" and out["orphan_daemon"] == "parent done\n",
        "orphan_daemon",
    )
    expect(results["fork_bomb"]["status"] in ("timeout", "killed"), "fork_bomb")
    expect(out["after_fork_bomb"] == "alive\n", "after_fork_bomb")
    return failures


def host_failures(ctx: dict) -> list[str]:
    """What the programs left on the host."""
    failures = []
    for path in (
        f"/run/lock/nanoreason-{ctx['tag']}",
        f"/var/tmp/nanoreason-{ctx['tag']}",
        f"/dev/shm/nanoreason-{ctx['tag']}",
        f"{ctx['world_dir']}/left-{ctx['tag']}",
        f"/nanoreason-{ctx['tag']}",
    ):
        if os.path.exists(path):
            failures.append(f"left on the host: {path}")
            os.unlink(path)
    with open("/proc/sysvipc/shm") as handle:
        keys = [int(line.split()[0]) for line in handle.readlines()[1:]]
    if ctx["shm_key"] in keys:
        failures.append(f"SysV shared memory key {ctx['shm_key']} left on the host")
    return failures


def processes_of_sandbox(token: str) -> list[int]:
    """Live (non-zombie) processes of a Sandbox: every zygote, job and bwrap process carries the
    Sandbox's token in its command line (jobs are forks of the zygote)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if token.encode() not in handle.read():
                    continue
            with open(f"/proc/{entry}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
        except OSError:
            continue
        found.append(int(entry))
    return found


def run_batch(sandbox_module, ctx: dict, **sandbox_kwargs) -> dict:
    """Run every program in order on one worker; then close the pool while a job still runs."""
    import threading
    import time

    programs = hostile_programs(ctx)
    with sandbox_module.Sandbox(workers=1, **sandbox_kwargs) as box:
        isolation = box.isolation
        results = {name: dataclasses.asdict(box.run(code)) for name, code in programs.items()}
        uids = box.uids
    box = sandbox_module.Sandbox(workers=1, **sandbox_kwargs)  # close() while a job runs
    started = threading.Thread(
        target=box.run,
        args=(programs["orphan_daemon"].replace("print('parent done')", "time.sleep(1000)"),),
        daemon=True,
    )
    started.start()
    time.sleep(1.0)
    running = processes_of_sandbox(box.token)  # bwrap, zygote, the job and its daemon
    box.close()
    started.join(timeout=20)
    left = processes_of_sandbox(box.token)
    return {
        "isolation": isolation,
        "results": results,
        "uids": uids,
        "running_before_close": len(running),
        "left_after_close": left,
    }


if (
    __name__ == "__main__"
):  # as nobody: python -I _sandbox_hostile.py CONTEXT_JSON SANDBOX_KWARGS_JSON
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from common import sandbox  # the copy beside this file

    context, kwargs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
    print(json.dumps(run_batch(sandbox, context, **kwargs)))
