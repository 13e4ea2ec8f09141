"""Run untrusted Python (a model's program) in a separate, locked-down process.

Isolation, each a separate layer (what this host supports is in :func:`isolation`):

- a fresh interpreter in its own session, killed (with its process group) at a wall-clock timeout;
- rlimits: CPU seconds, address space, file size, number of processes, open files, no core dumps;
- no inherited environment: the program sees only a fixed ``PATH``/``LANG``/``HOME``/``TMPDIR`` and
  one-thread settings, never the host's variables (API keys, tokens);
- a scratch directory as working directory and ``HOME``, deleted afterwards;
- stdout/stderr go to files capped by the file-size rlimit, and are read back truncated to
  ``max_output_bytes``;
- Landlock (Linux >= 5.13, unprivileged): writes, deletes and renames only beneath the scratch
  directory; with ABI >= 4 no TCP bind/connect; with ABI >= 6 no signals to, or abstract sockets of,
  processes outside the sandbox;
- seccomp (x86_64, aarch64): no new processes at all (fork, vfork, clone without CLONE_THREAD
  fail), which also stops a fork bomb when running as root, where RLIMIT_NPROC is not enforced.

The program may still *read* files the host user can read (the interpreter and its libraries must
be readable); do not run it as a user that can read secrets you care about. The lock-down happens in
``_sandbox_boot.py`` in the child interpreter, never in this (possibly multi-threaded) process.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from alignlab.errors import AlignlabError

__all__ = ["SandboxLimits", "SandboxResult", "isolation", "run_python", "self_check"]

_BOOT = Path(__file__).with_name("_sandbox_boot.py")


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 5.0
    """Wall-clock seconds before the process group is killed (a sleeping program uses no CPU)."""
    cpu_s: int = 5
    """CPU seconds (RLIMIT_CPU): SIGXCPU at the limit, SIGKILL a second later."""
    memory_mb: int = 1024
    """Address space in MiB (RLIMIT_AS): a larger allocation raises MemoryError / fails."""
    file_size_mb: int = 16
    """Largest file the program may write, stdout and stderr included (RLIMIT_FSIZE)."""
    nproc: int = 64
    """RLIMIT_NPROC (counts the whole user's processes; not enforced for root, hence seccomp too)."""
    open_files: int = 64
    """RLIMIT_NOFILE."""
    disk_mb: int = 64
    """Bytes the scratch directory may hold in all (MiB): RLIMIT_FSIZE bounds one file, so a watchdog sums the
    directory, with the files the program deleted but keeps open and its memfds, every 20 ms and kills the program
    over this (or over 10,000 entries)."""
    max_output_bytes: int = 65536
    """Bytes of stdout and of stderr read back; the rest is dropped (``output_truncated``)."""

    def __post_init__(self) -> None:
        counts = ("cpu_s", "memory_mb", "file_size_mb", "nproc", "open_files", "disk_mb", "max_output_bytes")
        if bad := [k for k in counts if type(getattr(self, k)) is not int]:  # setrlimit in the child refuses a float
            raise AlignlabError(f"sandbox: {', '.join(bad)} must be whole numbers: {self}")
        small = self.cpu_s < 1 or self.memory_mb < 64 or self.file_size_mb < 1 or self.disk_mb < 1
        if small or not 0 < self.timeout_s < math.inf:  # a NaN timeout_s never expired
            raise AlignlabError(f"sandbox: limits too small or negative: {self}")


@dataclass(frozen=True)
class SandboxResult:
    """What a sandboxed run did."""

    returncode: int | None
    """Exit status (negative: killed by that signal); None when killed for the wall-clock timeout."""
    stdout: str
    stderr: str
    timed_out: bool
    output_truncated: bool
    wall_s: float

    @property
    def passed(self) -> bool:
        """Exited normally with status 0 within the time limit."""
        return self.returncode == 0 and not self.timed_out


@lru_cache(maxsize=1)
def isolation() -> dict[str, int | bool]:
    """What this host supports: ``landlock_abi`` (0 when unavailable) and ``seccomp`` (bool)."""
    abi = 0
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION) returns the ABI version.
        res = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
        abi = max(int(res), 0)
    seccomp = sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64")
    return {"landlock_abi": abi, "seccomp": seccomp}


@lru_cache(maxsize=1)
def self_check() -> None:
    """Run a trivial program once per process; AlignlabError (with the sandbox's own message) when the
    sandbox cannot start here, so a broken host fails loudly instead of scoring every program 0."""
    res = run_python("print('ok')", limits=SandboxLimits(timeout_s=30.0))
    if not res.passed or res.stdout.strip() != "ok":
        raise AlignlabError(
            f"sandbox: a trivial program failed here (exit {res.returncode}, timed out {res.timed_out}): "
            f"{res.stderr.strip()[-500:]}"
        )


def _env(scratch: str, token: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": scratch,
        "TMPDIR": scratch,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "ALIGNLAB_SANDBOX": token,  # lets the host find (and kill) anything left behind
    }


def run_python(
    code: str,
    *,
    stdin: str = "",
    limits: SandboxLimits | None = None,
    files: Mapping[str, str] | None = None,
) -> SandboxResult:
    """Run ``code`` as ``main.py`` in a fresh scratch directory under every available isolation layer.

    ``files`` are extra text files written next to it (relative names only). Never raises for what
    the program does; raises AlignlabError only for bad arguments.
    """
    limits = limits or SandboxLimits()
    scratch = tempfile.mkdtemp(prefix="alignlab-sbx-")
    io_dir = tempfile.mkdtemp(prefix="alignlab-sbx-io-")
    token = uuid.uuid4().hex
    try:
        _write_files(scratch, {"main.py": code, **dict(files or {})})
        iso = isolation()
        cfg = {
            "scratch": scratch, "program": os.path.join(scratch, "main.py"), "python": sys.executable,
            "env": _env(scratch, token), "cpu_s": limits.cpu_s, "memory_mb": limits.memory_mb,
            "file_size_mb": limits.file_size_mb, "nproc": limits.nproc, "open_files": limits.open_files,
            "landlock_abi": iso["landlock_abi"], "seccomp": iso["seccomp"],
        }
        return _run(cfg, stdin, limits, io_dir, token)
    finally:
        _remove(scratch)
        _remove(io_dir)


def _remove(path: str) -> None:
    """Delete a folder the program filled. shutil.rmtree recurses on Python < 3.12 (a tree 1,500 folders deep
    raised RecursionError past ignore_errors and left both folders behind); rm walks any depth."""
    if shutil.which("rm") and subprocess.run(["rm", "-rf", "--", path], stderr=subprocess.DEVNULL).returncode == 0:
        return
    try:
        shutil.rmtree(path, ignore_errors=True)
    except RecursionError:
        pass


def _write_files(scratch: str, files: Mapping[str, str]) -> None:
    for name, text in files.items():
        path = os.path.normpath(os.path.join(scratch, name))
        if os.path.isabs(name) or not path.startswith(scratch + os.sep):
            raise AlignlabError(f"sandbox: file name {name!r} must be relative and stay inside the scratch dir")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Path(path).write_text(text)


def _run(cfg: dict, stdin: str, limits: SandboxLimits, io_dir: str, token: str) -> SandboxResult:
    paths = {k: os.path.join(io_dir, k) for k in ("stdin", "stdout", "stderr")}
    Path(paths["stdin"]).write_text(stdin)
    cmd = [sys.executable, "-I", "-S", str(_BOOT), json.dumps(cfg)]
    start = time.monotonic()
    timed_out = False
    with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, open(paths["stderr"], "wb") as ferr:
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, env=cfg["env"], cwd=cfg["scratch"],
                                start_new_session=True, close_fds=True)
        os.unlink(paths["stdin"])  # the child holds it open; a program finding the file could read it again
        over_disk = False
        try:
            while proc.poll() is None:  # the wall-clock limit, and the disk watchdog every 20 ms
                if time.monotonic() - start > limits.timeout_s:
                    timed_out = True
                    break
                if _over_disk(cfg["scratch"], limits.disk_mb * 1024 * 1024, proc.pid):
                    over_disk = True
                    break
                time.sleep(0.02)
        finally:
            _kill_group(proc.pid)
            proc.wait()
            if not cfg["seccomp"]:
                _reap_escaped(token)
    wall = time.monotonic() - start
    out, out_cut = _read_capped(paths["stdout"], limits.max_output_bytes)
    err, err_cut = _read_capped(paths["stderr"], limits.max_output_bytes)
    if over_disk:
        err += f"\nsandbox: killed: the scratch directory went over {limits.disk_mb} MiB (disk_mb)\n"
    rc = None if timed_out else proc.returncode
    return SandboxResult(rc, out, err, timed_out, out_cut or err_cut, wall)


def _open_unlinked_bytes(pid: int) -> int:
    """Blocks held by files the process keeps open after deleting them, and by its memfds: neither is in the
    directory (a program writing 16 MiB files, deleting each and keeping it open, held 640 MiB under disk_mb=64)."""
    total, fds = 0, f"/proc/{pid}/fd"
    try:
        names = os.listdir(fds)
    except OSError:
        return 0
    for name in names:
        try:
            target = os.readlink(os.path.join(fds, name))
            if target.endswith(" (deleted)") or target.startswith("/memfd:"):
                total += os.stat(os.path.join(fds, name)).st_blocks * 512
        except OSError:
            continue
    return total


def _over_disk(root: str, budget: int, pid: int | None = None, max_entries: int = 10_000) -> bool:
    """Whether the directory, with the process's deleted-but-open files, holds more than `budget` bytes (allocated
    blocks) or `max_entries` entries."""
    total, entries, stack = (_open_unlinked_bytes(pid) if pid else 0), 0, [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    entries += 1
                    if entries > max_entries:
                        return True
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if total > budget:
                        return True
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
        except OSError:
            continue
    return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_escaped(token: str) -> None:
    """Without seccomp a child could leave the process group (setsid): find it by its environment."""
    marker = f"ALIGNLAB_SANDBOX={token}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError):
            continue


def _read_capped(path: str, cap: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    return data[:cap].decode("utf-8", errors="replace"), len(data) > cap
