"""deploy/edgert.service checked by systemd's own tools: ``systemd-analyze verify`` accepts it
(with ExecStart pointed at an edgert that exists here) and ``systemd-analyze security
--offline=true`` scores its exposure at 4.0 or less, while nothing in it cuts the service off
from the Edge TPU (USB or /dev/apex_*) or from numba's JIT. Skipped where systemd-analyze is
absent (Debian: ``apt-get install systemd``; .ci/run installs it when it can)."""

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "deploy" / "edgert.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed "
                                                           "(Debian package 'systemd')")
MAX_EXPOSURE = 4.0


def service_section() -> dict[str, list[str]]:
    """Every key of [Service], with all its values in order (keys may repeat)."""
    out: dict[str, list[str]] = {}
    section = None
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            k, _, v = line.partition("=")
            out.setdefault(k, []).append(v)
    return out


def runnable_copy(tmp_path) -> Path:
    """The unit with ExecStart's binary replaced by this environment's edgert (verify checks
    that the binary exists and is executable; /opt/edgert/venv is the install example)."""
    edgert = shutil.which("edgert") or str(Path(sys.executable).with_name("edgert"))
    assert Path(edgert).is_file(), "the edgert console script is not installed"
    text = UNIT.read_text()
    text, n = re.subn(r"^ExecStart=\S+/edgert ", f"ExecStart={edgert} ", text, flags=re.M)
    assert n == 1
    unit = tmp_path / "edgert.service"
    unit.write_text(text)
    return unit


@needs_analyze
def test_systemd_analyze_verify_accepts_the_unit(tmp_path):
    """No diagnostics at all: an unknown key, group or address family is only a warning (exit
    0) for systemd, so any output fails the test."""
    unit = runnable_copy(tmp_path)
    res = subprocess.run([ANALYZE, "verify", "--man=no", str(unit)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0 and not res.stderr.strip() and not res.stdout.strip(), (
        res.returncode, res.stdout, res.stderr)
    svc = service_section()
    assert svc["StateDirectory"] == ["edgert"]  # the reservoir and published models
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@needs_analyze
def test_security_exposure_at_most_4():
    res = subprocess.run([ANALYZE, "security", "--offline=true", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    m = re.search(r"Overall exposure level for edgert\.service: (\d+(?:\.\d+)?) (\w+)", text)
    assert m, text[-2000:]
    assert float(m.group(1)) <= MAX_EXPOSURE, text


def test_hardening_keeps_devices_and_the_jit():
    """What a score cannot show: the Edge TPU stays reachable and numba can JIT."""
    svc = service_section()
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow",  # would hide USB / apex
                "ProtectClock",  # implies DeviceAllow=char-rtc before systemd 253
                "MemoryDenyWriteExecute",  # numba/LLVM needs W+X pages
                "ProcSubset"):  # hides /proc/cpuinfo
        assert key not in svc, key
    assert svc["CapabilityBoundingSet"] == [""] and svc["NoNewPrivileges"] == ["yes"]
    fams = svc["RestrictAddressFamilies"][0].split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"} <= set(fams)  # ipc, tcp, libusb
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert svc["SystemCallErrorNumber"] == ["EPERM"]  # a stray call fails, never SIGSYS
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNIT)
    assert parser["Service"]["Type"] == "notify"
