"""What the benchmark ran on: CPU, core count, load, library versions, CPU pinning, process CPU time."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# int8 dot-product instructions, best first, as /proc/cpuinfo names them. XNNPACK (LiteRT's CPU
# path) picks its int8 kernels by these and by the microarchitecture: motor-ae's invoke runs ~5x
# faster per window on one VNNI CPU (an AMD EPYC) than on another (this Intel Xeon), so any
# ratio against the bare invoke belongs to one CPU kind (shared/NOTES.md).
INT8_FLAGS = {
    "x86_64": (("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"), ("avx512bw", "avx512"),
               ("avx2", "avx2"), ("sse4_1", "sse4.1")),
    "aarch64": (("i8mm", "i8mm"), ("asimddp", "dotprod"), ("asimd", "neon")),
}
INT8_EXTRA = ("amx_int8", "avx512_vnni", "avx_vnni", "avx512bw", "avx2", "i8mm", "asimddp")
# the fields that name a microarchitecture: x86 vendor, family, model; ARM implementer, part
IDENT_KEYS = (("vendor_id", "cpu family", "model"), ("cpu implementer", "cpu architecture", "cpu part"))


def _first_cpu(text: str | None) -> dict:
    """{lowercased key: value} of the first processor in /proc/cpuinfo (or `text`)."""
    if text is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {}
    out = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return out


def cpu_flags(text: str | None = None) -> set:
    """The CPU feature flags of the first processor in /proc/cpuinfo (``flags`` on x86,
    ``Features`` on ARM); an empty set when unknown."""
    d = _first_cpu(text)
    return set((d.get("flags") or d.get("features") or "").split())


def cpu_ident(text: str | None = None) -> str:
    """The microarchitecture as /proc/cpuinfo names it: "GenuineIntel 6/167" (vendor,
    family/model) or "0x41 8/0xd0c" (ARM implementer, architecture/part); "" when unknown."""
    d = _first_cpu(text)
    for a, b, c in IDENT_KEYS:
        if a in d:
            return f"{d[a]} {d.get(b, '?')}/{d.get(c, '?')}"
    return ""


def cpu_int8(flags: set | None = None, machine: str | None = None, ident: str | None = None) -> dict:
    """The CPU's int8 instructions: ``{"kind": "x86_64 avx512-vnni GenuineIntel 6/167",
    "vnni": True, "flags": [...], "ident": ...}``. ``kind`` (architecture, best int8
    dot-product level, microarchitecture) keys the CI baseline: ratios against the bare invoke
    are only compared between CPUs of one kind."""
    flags = cpu_flags() if flags is None else set(flags)
    machine = machine or platform.machine()
    ident = cpu_ident() if ident is None else ident
    level = "unknown"
    for flag, name in INT8_FLAGS.get(machine, ()):
        if flag in flags:
            level = name
            break
    return {"kind": " ".join(x for x in (machine, level, ident) if x),
            "vnni": bool(flags & {"avx512_vnni", "avx_vnni"}),
            "flags": sorted(flags & set(INT8_EXTRA)), "ident": ident}


def loadavg() -> list | None:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return None


def cpu_times() -> dict | None:
    """Per-CPU jiffies from /proc/stat: {cpu: (busy, idle, steal)}."""
    try:
        out = {}
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                f = line.split()
                v = [int(x) for x in f[1:]]
                idle = v[3] + v[4]
                steal = v[7] if len(v) > 7 else 0
                busy = sum(v[:8]) - idle - steal
                out[f[0]] = (busy, idle, steal)
        return out
    except (OSError, ValueError):
        return None


def cpu_usage(before: dict | None, after: dict | None) -> dict | None:
    """Busy and steal share of each CPU between two `cpu_times()` snapshots."""
    if not before or not after:
        return None
    res = {}
    for cpu, (b1, i1, s1) in after.items():
        if cpu not in before:
            continue
        b0, i0, s0 = before[cpu]
        tot = (b1 - b0) + (i1 - i0) + (s1 - s0)
        if tot > 0:
            res[cpu] = {"busy": round((b1 - b0) / tot, 3), "steal": round((s1 - s0) / tot, 3)}
    return res


def _own_cpu_s() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadMeter:
    """CPU used by *other* processes while something ran: every CPU's busy jiffies in
    /proc/stat minus this process tree's own CPU time (its children count once waited for,
    which every section does before it returns), plus the time the hypervisor gave to other
    guests (steal). ``stop()`` gives ``others_share``: that load as a share of the cores.

    ``read_cpu`` / ``read_own`` / ``clock`` replace /proc/stat, `os.times` and the clock (tests).
    """

    def __init__(self, read_cpu=None, read_own=None, clock=None):
        self._read_cpu = read_cpu or cpu_times
        self._read_own = read_own or _own_cpu_s
        self._clock = clock or time.perf_counter
        self.t = self._clock()
        self.cpu = self._read_cpu()
        self.own = self._read_own()

    def stop(self) -> dict:
        """{"seconds", "cores", "other_cores", "steal_cores", "others_share", "per_cpu"};
        only "seconds" when /proc/stat is unreadable."""
        wall = self._clock() - self.t
        cpu, own = self._read_cpu(), self._read_own()
        res = {"seconds": round(wall, 2)}
        if not (self.cpu and cpu and wall > 0):
            return res
        tick = os.sysconf("SC_CLK_TCK")
        both = [c for c in cpu if c in self.cpu]
        busy = sum(cpu[c][0] - self.cpu[c][0] for c in both) / tick
        steal = sum(cpu[c][2] - self.cpu[c][2] for c in both) / tick
        other = max(0.0, busy - (own - self.own)) / wall
        res.update({"cores": len(both), "other_cores": round(other, 2),
                    "steal_cores": round(steal / wall, 2),
                    "others_share": round((other + steal / wall) / max(1, len(both)), 3),
                    "per_cpu": cpu_usage(self.cpu, cpu)})
        return res


def git_rev(root: Path) -> dict | None:
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return {"commit": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info() -> dict:
    import numpy
    import zmq

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    try:
        import numba
        numba_v = numba.__version__
    except Exception as exc:  # noqa: BLE001 - report, don't fail
        numba_v = f"unavailable ({type(exc).__name__})"
    from edgert import kernels

    return {
        "cpu_model": cpu_model(),
        "cpu_int8": cpu_int8(),
        "nproc": os.cpu_count(),
        "affinity": affinity,
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "numpy": numpy.__version__,
        "numba": numba_v,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "msgpack": _version("msgpack"),
        "litert": _version("ai-edge-litert"),
        "tflite_runtime": _version("tflite-runtime"),
        "edgert": _version("edgert"),
        "kernels_backend": kernels.BACKEND,
        "loadavg_start": loadavg(),
        "executable": sys.executable,
    }


def pin(cpu: int) -> bool:
    """Pin the calling thread (and threads it starts later) to `cpu`. False if not possible."""
    try:
        if cpu in os.sched_getaffinity(0):
            os.sched_setaffinity(0, {cpu})
            return True
    except (AttributeError, OSError):
        pass
    return False


def proc_threads_cpu(pid: int) -> dict:
    """CPU seconds (user+system) per thread of process `pid`: {"tid:name": seconds}."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    base = Path(f"/proc/{pid}/task")
    try:
        tids = list(base.iterdir())
    except OSError:
        return out
    for t in tids:
        try:
            stat = (t / "stat").read_text()
            name = (t / "comm").read_text().strip()
        except OSError:
            continue
        f = stat[stat.rindex(")") + 2:].split()
        out[f"{t.name}:{name}"] = (int(f[11]) + int(f[12])) / tick
    return out


def threads_cpu_share(before: dict, after: dict, seconds: float) -> dict:
    """Share of one core each thread used between two `proc_threads_cpu` snapshots."""
    if seconds <= 0:
        return {}
    res = {k: round((v - before.get(k, 0.0)) / seconds, 3) for k, v in after.items()}
    return {k: v for k, v in sorted(res.items(), key=lambda kv: -kv[1]) if v > 0.005}


def proc_mem_mb(pid: int) -> dict:
    """VmRSS and VmHWM (peak RSS) of a process, MB."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                out[key] = round(int(val.split()[0]) / 1024, 1)
    except (OSError, ValueError):
        pass
    return {"rss_mb": out.get("VmRSS"), "peak_rss_mb": out.get("VmHWM")}
