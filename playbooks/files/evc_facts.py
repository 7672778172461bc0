#!/usr/bin/env python3
"""Print this node's facts as one JSON object (runs on the node; stdlib only)."""

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf"}


def read(path):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cgroup_path(controller):
    for line in (read("/proc/self/cgroup") or "").splitlines():
        _, names, path = line.split(":", 2)
        if controller in names.split(",") or names == "":
            return names, path
    return None, None


def cpu_count():
    count = float(os.cpu_count() or 1)
    v2 = read("/sys/fs/cgroup/cpu.max")
    if v2 and not v2.startswith("max"):
        quota, period = v2.split()
        return min(count, int(quota) / int(period))
    _, path = cgroup_path("cpu")
    for base in (f"/sys/fs/cgroup/cpu{path}", "/sys/fs/cgroup/cpu"):
        quota, period = read(f"{base}/cpu.cfs_quota_us"), read(f"{base}/cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            return min(count, int(quota) / int(period))
    return count


def mem_bytes():
    total = None
    for line in (read("/proc/meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    _, path = cgroup_path("memory")
    v1_limit = f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"
    # The last: cgroup v1 in a container whose own cgroup is the mount's root.
    v1_own = "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    for limit_file in ("/sys/fs/cgroup/memory.max", v1_limit, v1_own):
        limit = read(limit_file)
        if limit and limit.isdigit() and total and int(limit) < total:
            return int(limit)
    return total


def run(*cmd):
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def accelerator():
    gpu = run("nvidia-smi", "--query-gpu=name", "--format=csv,noheader")
    if gpu:
        return "nvidia:" + gpu.splitlines()[0].strip()
    if Path("/etc/nv_tegra_release").exists() or shutil.which("tegrastats"):
        return "jetson"
    compatible = read("/proc/device-tree/compatible") or ""
    if (
        Path("/sys/kernel/debug/rknpu").exists()
        or Path("/dev/rknpu").exists()
        or ("rockchip" in compatible and "rk3588" in compatible)
    ):
        return "rockchip-npu"
    if shutil.which("npu-smi"):
        return "ascend"
    return "none"


def os_name():
    for line in (read("/etc/os-release") or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return platform.system()


print(
    json.dumps(
        {
            "arch": ARCH.get(platform.machine(), platform.machine()),
            "os": os_name(),
            "kernel": platform.release(),
            "cpu_count": round(cpu_count(), 3),
            "mem_bytes": mem_bytes(),
            "disk_bytes": shutil.disk_usage("/").total,
            "accelerator": accelerator(),
            "docker_version": run("docker", "version", "--format", "{{.Server.Version}}"),
        }
    )
)
