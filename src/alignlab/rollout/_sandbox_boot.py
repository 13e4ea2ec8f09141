"""Sandbox bootstrap: runs as its own interpreter (``python -I -S _sandbox_boot.py '<json>'``), locks
itself down, then execs the untrusted program. Standard library only (ctypes); imports nothing from
alignlab, so nothing of the host process leaks in.

Order matters: rlimits first (the exec'd program inherits them), then, as root, every capability dropped
(bounding set included, so the exec'd interpreter gets none back), then no_new_privs, then Landlock
(filesystem writes only beneath the scratch directory, no TCP, no signals or abstract sockets
outside), then a seccomp filter that refuses every new process (threads stay allowed), then exec.
Each step the parent asked for must succeed; a failure exits 126 with the reason on stderr, so a
sandbox never silently runs with less isolation than it reported.
"""

import ctypes
import json
import os
import platform
import resource
import struct
import sys

_LIBC = ctypes.CDLL(None, use_errno=True)
_NR = {  # (landlock_create_ruleset, landlock_add_rule, landlock_restrict_self) are the same on both
    "x86_64": {"fork": 57, "vfork": 58, "clone": 56, "clone3": 435, "arch": 0xC000003E,
               # what Landlock does not cover and a root process could still do to the host: file modes, owners,
               # times, xattrs (90-94, 132, 188-199, 235, 260, 261, 268, 280, 452), other processes' priority and
               # scheduling (141, 142, 144, 203, 251), the host's names (170, 171), and sockets (41: UDP and unix
               # sockets outside the scratch directory are not Landlock's; a program under test needs none)
               "deny": (90, 91, 92, 93, 94, 132, 188, 189, 190, 197, 198, 199, 235, 260, 261, 268, 280, 452,
                        141, 142, 144, 203, 251, 170, 171, 41),
               "prlimit64": 302, "ioctl": 16, "capset": 126},
    "aarch64": {"fork": None, "vfork": None, "clone": 220, "clone3": 435, "arch": 0xC00000B7, "capset": 91},
}
_FS_IOC_SETFLAGS, _FS_IOC_FSSETXATTR = 0x40086602, 0x401C5820  # chattr (+i on a file outside the scratch dir)
_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2


def _die(msg: str) -> None:
    sys.stderr.write(f"sandbox: {msg}\n")
    sys.stderr.flush()
    os._exit(126)


def _syscall(nr: int, *args) -> int:
    # Variadic syscall(2): pass every integer as a full C long, pointers as they are.
    res = _LIBC.syscall(ctypes.c_long(nr), *(ctypes.c_long(a) if isinstance(a, int) else a for a in args))
    if res < 0:
        _die(f"syscall {nr} failed: {os.strerror(ctypes.get_errno())}")
    return res


def set_limits(cfg: dict) -> None:
    mb = 1024 * 1024
    limits = {
        resource.RLIMIT_CPU: (cfg["cpu_s"], cfg["cpu_s"] + 1),
        resource.RLIMIT_AS: (cfg["memory_mb"] * mb,) * 2,
        resource.RLIMIT_FSIZE: (cfg["file_size_mb"] * mb,) * 2,
        resource.RLIMIT_NPROC: (cfg["nproc"],) * 2,
        resource.RLIMIT_NOFILE: (cfg["open_files"],) * 2,
        resource.RLIMIT_CORE: (0, 0),
    }
    for which, value in limits.items():
        resource.setrlimit(which, value)


def drop_capabilities() -> None:
    """As root: empty the bounding set (so the exec'd interpreter gets no capability back) and the current sets. A
    root process keeps its uid, but without CAP_SYS_PTRACE, CAP_DAC_* or CAP_SYS_ADMIN it cannot read another
    process's environment (the trainer's API keys) or act as the administrator."""
    for cap in range(64):
        if _LIBC.prctl(24, ctypes.c_ulong(cap), ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0)):
            if ctypes.get_errno() == 22:  # EINVAL: past the last capability this kernel knows
                break
            _die(f"dropping capability {cap} failed: {os.strerror(ctypes.get_errno())}")
    header = ctypes.create_string_buffer(struct.pack("=Ii", 0x20080522, 0), 8)  # _LINUX_CAPABILITY_VERSION_3
    data = ctypes.create_string_buffer(bytes(24), 24)  # two {effective, permitted, inheritable}: all empty
    _syscall(_NR[platform.machine()]["capset"], header, data)


def landlock(scratch: str, abi: int) -> None:
    """Handle every write-like filesystem right and allow them only beneath ``scratch``."""
    fs = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 7) | (1 << 8) | (1 << 9) | (1 << 10) | (1 << 11) | (1 << 12)
    # 1 WRITE_FILE, 4 REMOVE_DIR, 5 REMOVE_FILE, 6..12 MAKE_{CHAR,DIR,REG,SOCK,FIFO,BLOCK,SYM}
    if abi >= 2:
        fs |= 1 << 13  # REFER
    if abi >= 3:
        fs |= 1 << 14  # TRUNCATE
    if abi >= 5:
        fs |= 1 << 15  # IOCTL_DEV
    net = 0b11 if abi >= 4 else 0  # BIND_TCP, CONNECT_TCP: no rule grants them, so no TCP at all
    scoped = 0b11 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET, SIGNAL: nothing outside the sandbox
    attr = struct.pack("=QQQ", fs, net, scoped)
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    buf = ctypes.create_string_buffer(attr[:size], size)
    ruleset = _syscall(_LL_CREATE, buf, size, 0)
    fd = os.open(scratch, os.O_PATH | os.O_DIRECTORY)
    rule = ctypes.create_string_buffer(struct.pack("=Qi", fs, fd), 12)  # landlock_path_beneath_attr, packed
    _syscall(_LL_ADD, ruleset, 1, rule, 0)  # 1 = LANDLOCK_RULE_PATH_BENEATH
    os.close(fd)
    _syscall(_LL_RESTRICT, ruleset, 0)
    os.close(ruleset)


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def no_new_processes() -> None:
    """seccomp-bpf: fork/vfork/clone3 and any clone without CLONE_THREAD fail with EPERM (clone3 with
    ENOSYS, so libc falls back to clone for threads); on x86_64 also what Landlock leaves open to a root
    process (`_NR["x86_64"]["deny"]`, another pid's rlimits, chattr); a foreign ABI is killed."""
    nr = _NR[platform.machine()]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38, 0x80000000
    denied = [n for n in (nr["fork"], nr["vfork"], *nr.get("deny", ())) if n is not None]
    prog = [_bpf(ld, 4), _bpf(jeq, nr["arch"], 1, 0), _bpf(ret, kill), _bpf(ld, 0),
            _bpf(jge, 0x40000000, 0, 1), _bpf(ret, eperm)]  # x32 syscalls: refuse
    for n in denied:
        prog += [_bpf(jeq, n, 0, 1), _bpf(ret, eperm)]
    if "prlimit64" in nr:  # another process's limits (the trainer's): refused; its own (pid 0) allowed
        prog += [_bpf(jeq, nr["prlimit64"], 0, 3), _bpf(ld, 16), _bpf(jeq, 0, 1, 0), _bpf(ret, eperm), _bpf(ld, 0)]
    if "ioctl" in nr:  # file attribute flags (chattr): refused; every other ioctl allowed
        prog += [_bpf(jeq, nr["ioctl"], 0, 5), _bpf(ld, 24), _bpf(jeq, _FS_IOC_SETFLAGS, 2, 0),
                 _bpf(jeq, _FS_IOC_FSSETXATTR, 1, 0), _bpf(0x05, 1), _bpf(ret, eperm), _bpf(ld, 0)]
    prog += [_bpf(jeq, nr["clone3"], 0, 1), _bpf(ret, enosys),
             _bpf(jeq, nr["clone"], 0, 3),  # not clone: jump to allow
             _bpf(ld, 16),  # args[0] (flags), low 32 bits
             _bpf(jset, 0x00010000, 1, 0),  # CLONE_THREAD: jump to allow
             _bpf(ret, eperm),
             _bpf(ret, allow)]
    filt = b"".join(prog)
    insns = ctypes.create_string_buffer(filt, len(filt))
    fprog = struct.pack("=HxxxxxxQ", len(prog), ctypes.addressof(insns))
    fbuf = ctypes.create_string_buffer(fprog, len(fprog))
    if _LIBC.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), fbuf, ctypes.c_ulong(0), ctypes.c_ulong(0)):
        _die(f"seccomp failed: {os.strerror(ctypes.get_errno())}")


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        set_limits(cfg)
    except (OSError, ValueError) as e:
        _die(f"setrlimit failed: {e}")
    if sys.platform == "linux" and os.geteuid() == 0 and platform.machine() in _NR:
        drop_capabilities()
    if sys.platform == "linux" and _LIBC.prctl(PR_SET_NO_NEW_PRIVS, *(ctypes.c_ulong(v) for v in (1, 0, 0, 0))):
        _die(f"no_new_privs failed: {os.strerror(ctypes.get_errno())}")
    if cfg["landlock_abi"] > 0:
        landlock(cfg["scratch"], cfg["landlock_abi"])
    if cfg["seccomp"]:
        no_new_processes()
    os.chdir(cfg["scratch"])
    os.execve(cfg["python"], [cfg["python"], "-E", "-s", "-B", cfg["program"]], cfg["env"])


if __name__ == "__main__":
    main()
