"""What the benchmarks ran on: the machine, the software versions and how busy the machine was."""

import os
import platform
import re
import subprocess
from importlib.metadata import version
from pathlib import Path

from bench.stack import Stack


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_bytes() -> int:
    match = re.search(r"MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text())
    return int(match.group(1)) * 1024 if match else 0


def _os_name() -> str:
    release = Path("/etc/os-release")
    if release.is_file():
        match = re.search(r'PRETTY_NAME="([^"]+)"', release.read_text())
        if match:
            return match.group(1)
    return platform.platform()


def _wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    except FileNotFoundError:
        return "not installed"
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()


def machine_info(stack: Stack) -> dict:
    """The machine and every version the figures depend on."""
    (postgres,) = stack.query("SHOW server_version")[0]
    with stack.broker.client() as client:
        redis_version = client.info("server")["redis_version"]
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "ram_gib": round(_ram_bytes() / 2**30, 1),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": version("django"),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "gunicorn": version("gunicorn"),
        "psycopg": version("psycopg"),
        "redis_py": version("redis"),
        "postgresql": postgres,
        "redis": redis_version,
        "wrk": _wrk_version(),
        "load_average_at_start": [round(load, 2) for load in os.getloadavg()],
    }
