"""The code sandbox and the `code` reward: hostile programs get reward 0 within their timeout and leave
the host untouched; a correct program gets 1 (so each test can fail)."""

import os
import time

import pytest

from alignlab.errors import AlignlabError
from alignlab.rollout.code_reward import extract_program, run_tests
from alignlab.rollout.rewards import get_reward
from alignlab.rollout.sandbox import SandboxLimits, isolation, run_python

FAST = SandboxLimits(timeout_s=2.0, cpu_s=2, memory_mb=512)


def _code_reward(completion: str, tests, **options) -> tuple[float, float]:
    fn = get_reward("code", timeout_s=2.0, cpu_s=2, memory_mb=512, **options)
    start = time.monotonic()
    value = fn(["p"], [completion], tests=[tests])[0]
    return value, time.monotonic() - start


def _fenced(code: str) -> str:
    return f"Here is my solution:\n```python\n{code}\n```\nDone."


def test_correct_program_passes_all_three_test_shapes():
    program = _fenced("import sys\ndef add(a, b):\n    return a + b\ndata = sys.stdin.read().split()\n"
                      "if data:\n    print(add(int(data[0]), int(data[1])))")
    assert _code_reward(program, "assert add(2, 3) == 5")[0] == 1.0
    assert _code_reward(program, ["assert add(1, 1) == 2", "assert add(0, 0) == 0"])[0] == 1.0
    io = [{"input": "2 3\n", "output": "5\n"}, {"input": "1 1", "output": "2"}]
    assert _code_reward(program, io)[0] == 1.0
    assert _code_reward(program, io + [{"input": "1 1", "output": "3"}])[0] == 0.0
    assert _code_reward(program, io + [{"input": "1 1", "output": "3"}], partial=True)[0] == pytest.approx(2 / 3)


def test_extract_program_prefers_last_python_fence():
    text = "```\nplain\n```\n```python\nfirst\n```\n```py\nsecond\n```\n```bash\nls\n```"
    assert extract_program(text).strip() == "second"
    assert extract_program("x = 1").strip() == "x = 1"


def test_infinite_loop_gets_zero_within_its_timeout():
    value, took = _code_reward(_fenced("while True:\n    pass"), "assert True")
    assert value == 0.0 and took < 4.0
    res = run_python("import time\ntime.sleep(60)", limits=SandboxLimits(timeout_s=1.0))
    assert res.timed_out and res.returncode is None and res.wall_s < 3.0


def _leftover_sandbox_processes() -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if b"ALIGNLAB_SANDBOX=" in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_fork_bomb_is_bounded_and_leaves_nothing_behind():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    value, took = _code_reward(_fenced(bomb), "assert True")
    assert value == 0.0 and took < 4.0
    res = run_python("import os\npid = os.fork()\nprint('forked', pid)", limits=FAST)
    assert not res.passed
    if isolation()["seccomp"]:
        assert "forked" not in res.stdout  # no new process at all
    assert _leftover_sandbox_processes() == []


def test_ten_gigabyte_allocation_fails_fast():
    value, took = _code_reward(_fenced("block = bytearray(10 * 1024 ** 3)"), "assert len(block) > 0")
    assert value == 0.0 and took < 4.0
    assert "MemoryError" in run_python("bytearray(10 * 1024 ** 3)", limits=FAST).stderr


def test_writing_or_deleting_outside_its_directory_fails(tmp_path):
    if isolation()["landlock_abi"] == 0:
        pytest.skip("Landlock is not available on this kernel: writes are limited by file permissions only")
    sentinel = tmp_path / "keep.txt"
    sentinel.write_text("host data")
    target = tmp_path / "pwned.txt"
    program = (f"open({str(target)!r}, 'w').write('x')\n")
    assert _code_reward(_fenced(program), "assert True")[0] == 0.0
    assert _code_reward(_fenced(f"import os\nos.remove({str(sentinel)!r})"), "assert True")[0] == 0.0
    assert _code_reward(_fenced("open('/tmp/alignlab-sandbox-escape', 'w').write('x')"), "assert True")[0] == 0.0
    assert not target.exists() and sentinel.read_text() == "host data"
    assert not os.path.exists("/tmp/alignlab-sandbox-escape")
    # Writing inside its own scratch directory works.
    assert _code_reward(_fenced("open('local.txt', 'w').write('ok')"), "assert open('local.txt').read() == 'ok'")[0] == 1.0


def test_host_environment_is_not_visible(monkeypatch):
    monkeypatch.setenv("ALIGNLAB_TEST_SECRET", "s3cr3t")
    program = _fenced("import os\nSECRET = os.environ.get('ALIGNLAB_TEST_SECRET')")
    assert _code_reward(program, "assert SECRET == 's3cr3t'")[0] == 0.0
    assert _code_reward(program, "assert SECRET is None")[0] == 1.0


def test_output_is_bounded():
    res = run_python("while True:\n    print('x' * 1000)", limits=SandboxLimits(timeout_s=2.0, file_size_mb=1,
                                                                               max_output_bytes=1000))
    assert not res.passed and res.output_truncated and len(res.stdout) == 1000


def test_bad_tests_and_file_names_are_clear_errors():
    with pytest.raises(AlignlabError, match="row 0"):
        get_reward("code")(["p"], ["x = 1"], tests=[[42]])
    with pytest.raises(AlignlabError, match="no 'tests'"):
        get_reward("code")(["p"], ["x = 1"])
    with pytest.raises(AlignlabError, match="relative"):
        run_python("pass", files={"../escape.py": ""})
    assert run_tests("x = 1", "assert x == 1", FAST) == (1, 1)


def test_self_check_passes_here_and_reports_a_broken_sandbox(monkeypatch):
    from alignlab.rollout import sandbox

    sandbox.self_check()  # this host runs programs
    sandbox.self_check.cache_clear()
    monkeypatch.setattr(sandbox, "_BOOT", sandbox._BOOT.with_name("no_such_boot.py"))
    try:
        with pytest.raises(AlignlabError, match="trivial program failed"):
            sandbox.self_check()
    finally:
        sandbox.self_check.cache_clear()


def test_rlimits_are_in_force_inside():
    limits = SandboxLimits(timeout_s=5.0, cpu_s=3, memory_mb=300, file_size_mb=2, nproc=17, open_files=33)
    probe = ("import resource as r\n"
             "for name in ('CPU', 'AS', 'FSIZE', 'NPROC', 'NOFILE', 'CORE'):\n"
             "    print(name, *r.getrlimit(getattr(r, 'RLIMIT_' + name)))")
    res = run_python(probe, limits=limits)
    got = {line.split()[0]: tuple(map(int, line.split()[1:])) for line in res.stdout.splitlines()}
    mb = 1024 * 1024
    assert got == {"CPU": (3, 4), "AS": (300 * mb,) * 2, "FSIZE": (2 * mb,) * 2, "NPROC": (17, 17),
                   "NOFILE": (33, 33), "CORE": (0, 0)}


def test_cpu_limit_kills_a_busy_loop_before_the_wall_clock():
    res = run_python("while True:\n    pass", limits=SandboxLimits(timeout_s=30.0, cpu_s=1))
    assert not res.timed_out and res.returncode in (-24, -9)  # SIGXCPU, then SIGKILL at the hard limit


def test_no_network_and_no_signals_outside():
    import socket

    abi = isolation()["landlock_abi"]
    if abi < 6:
        pytest.skip(f"Landlock ABI {abi} < 6: TCP and signal scoping are not available on this kernel")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    try:
        port = server.getsockname()[1]
        res = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)", limits=FAST)
        assert not res.passed and "PermissionError" in res.stderr
    finally:
        server.close()
    res = run_python(f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)", limits=FAST)
    assert not res.passed and "PermissionError" in res.stderr  # and this test process is still here


@pytest.mark.skipif(os.geteuid() != 0 or os.uname().machine != "x86_64", reason="root on x86_64: the host this guards")
def test_a_root_program_cannot_touch_the_host_beyond_landlocks_reach(tmp_path):
    """Landlock covers writes and TCP only. As root the program also changed modes, owners and times of files
    outside its directory, set the trainer's rlimits and priority, read its environment (API keys), and sent UDP.
    Capabilities are dropped and seccomp refuses the rest: every attempt fails, the file is as it was."""
    if not isolation()["seccomp"]:
        pytest.skip("no seccomp here")
    victim = tmp_path / "victim.txt"
    victim.write_text("host data\n")
    os.chmod(victim, 0o600)
    before = victim.stat()
    program = f"""
import os, resource, socket
out = []
def attempt(name, fn):
    try:
        fn()
        out.append(name + " ok")
    except OSError:
        out.append(name + " denied")
p = os.getppid()
attempt("chmod", lambda: os.chmod({str(victim)!r}, 0o777))
attempt("chown", lambda: os.chown({str(victim)!r}, 65534, 65534))
attempt("utime", lambda: os.utime({str(victim)!r}, (0, 0)))
attempt("environ", lambda: open(f"/proc/{{p}}/environ", "rb").read())
attempt("prlimit", lambda: resource.prlimit(p, resource.RLIMIT_NOFILE, (8, 8)))
attempt("setpriority", lambda: os.setpriority(os.PRIO_PROCESS, p, 19))
attempt("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
print(";".join(out))
"""
    res = run_python(program)
    assert res.stdout.strip().split(";") == [f"{n} denied" for n in ("chmod", "chown", "utime", "environ", "prlimit",
                                                                     "setpriority", "udp")], res.stderr
    after = victim.stat()
    assert (after.st_mode, after.st_uid, after.st_mtime) == (before.st_mode, before.st_uid, before.st_mtime)
    import resource

    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] > 8  # this process (the sandbox's parent) kept its limits


def test_filling_the_disk_file_by_file_is_stopped():
    """RLIMIT_FSIZE bounds one file; a program writing 1 MiB files without end is killed by the disk watchdog once
    its directory holds more than disk_mb, long before its time limit."""
    program = "blob = b'x' * (1 << 20)\ni = 0\nwhile True:\n    open(f'f{i}', 'wb').write(blob)\n    i += 1\n"
    res = run_python(program, limits=SandboxLimits(timeout_s=20, cpu_s=20, file_size_mb=1, disk_mb=8))
    assert not res.passed and not res.timed_out and res.wall_s < 10
    assert "went over 8 MiB" in res.stderr


def test_deleted_open_files_and_memfds_count_against_disk_mb():
    """The watchdog summed the directory only: a program deleting each 16 MiB file it wrote and keeping it open (or
    writing into memfds) held 640 MiB under disk_mb=64 and exited 0."""
    keep_deleted = ("import os\nheld = []\nfor i in range(10):\n    f = open(f'f{i}', 'wb')\n"
                    "    f.write(b'x' * (16 << 20)); f.flush(); os.unlink(f'f{i}'); held.append(f)\n"
                    "import time; time.sleep(0.5)\n")
    memfds = ("import os, time\nheld = []\nfor i in range(10):\n    fd = os.memfd_create(f'm{i}')\n"
              "    os.write(fd, b'x' * (16 << 20)); held.append(fd)\ntime.sleep(0.5)\n")
    for program in (keep_deleted, memfds):
        res = run_python(program, limits=SandboxLimits(timeout_s=20, cpu_s=20, file_size_mb=32, disk_mb=64))
        assert not res.passed and "went over 64 MiB" in res.stderr, res


def test_a_deep_tree_is_removed_and_bad_timeouts_are_refused(tmp_path, monkeypatch):
    """shutil.rmtree recursed (Python 3.11): a program nesting 1,500 folders made run_python raise RecursionError
    and left its folders in the temp dir. A NaN timeout_s never expired."""
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    deep = "import os\nfor i in range(1500):\n    os.mkdir('d')\n    os.chdir('d')\nprint('ok')\n"
    res = run_python(deep, limits=FAST)
    assert res.passed and res.stdout.strip() == "ok"
    assert not list(tmp_path.iterdir())
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(AlignlabError, match="limits too small"):
            SandboxLimits(timeout_s=bad)
