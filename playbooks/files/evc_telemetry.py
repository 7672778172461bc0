#!/usr/bin/python3
"""One telemetry sample of this node (runs on the node; stdlib only); with
``--registry-address``, the node's state for `evc fleet status` instead.

telemetry.yml and fleet_status.yml run it as ``python3 -c SOURCE`` (a raw command),
not as a module: a module run unpacks Ansible's module_utils from a zip on every call
(about 0.2 CPU-s of the node's), this costs its own imports alone.

CPU utilisation and network byte rates are deltas of counters against the
previous sample, kept in ``state_file``; with no usable previous sample (first
run, reboot, older than an hour) the module takes a 0.3 s delta itself. No
blocking tool is run. Missing sensors (no thermal zone, no GPU/NPU, no Docker)
give None, never an error.

A node that is itself a container (the EVC lab, or a device running EVC's agent
in Docker) sees the host's /proc/stat and /proc/meminfo, so it reports its own
cgroup instead: CPU time against its CPU quota, memory against its limit
(cgroup v1 or v2). Load averages are the kernel's, which is the host's there.

The parsing helpers are pure functions so that tests can import this file. It
runs on the node's python3, which may be as old as ansible-core allows there
(3.8): no newer syntax.
"""

import glob
import hashlib
import http.client
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from urllib.parse import quote

FIRST_DELTA_S = 0.3
MAX_AGE_S = 3600.0
MIN_DT_S = 0.2
CGROUP = "/sys/fs/cgroup"
THERMAL = "/sys/class/thermal"
DOCKER_SOCK = "/var/run/docker.sock"
MANAGED_LABEL = "evc.managed=true"
MODEL_LABEL = "evc.model.name"
MAX_CONTAINERS = 64  # what one node reports is bounded: the controller reads it as data
UNLIMITED = 2**60  # cgroup v1 writes ~2**63 for "no memory limit"
JETSON_GPU_LOAD = (
    "/sys/devices/gpu.0/load",
    "/sys/devices/platform/gpu.0/load",
    "/sys/devices/platform/*.ga10b/load",
    "/sys/devices/platform/*.gv11b/load",
    "/sys/devices/platform/*.gp10b/load",
    "/sys/devices/platform/bus@0/*.gpu/load",
)
RKNPU_LOAD = "/sys/kernel/debug/rknpu/load"
_CONTAINER_PATH = re.compile(r"docker|kubepods|containerd|libpod|lxc")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


# ---------------------------------------------------------------- parsing (pure)


def parse_proc_stat(text):
    """(busy, total) jiffies of the aggregate ``cpu`` line; iowait counts as idle."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            v = [int(x) for x in line.split()[1:9]]  # guest time is inside user/nice
            v += [0] * (8 - len(v))
            total = sum(v)
            return total - v[3] - v[4], total
    raise ValueError("no aggregate cpu line in /proc/stat")


def parse_net_dev(text):
    """{iface: (rx_bytes, tx_bytes)} from /proc/net/dev."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and len(fields) >= 9:
            out[name.strip()] = (int(fields[0]), int(fields[8]))
    return out


def parse_meminfo(text):
    """(total, used) bytes; used = MemTotal - MemAvailable (MemFree+Buffers+Cached if older)."""
    kb = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if rest.split():
            kb[key] = int(rest.split()[0]) * 1024
    total = kb["MemTotal"]
    avail = kb.get("MemAvailable")
    if avail is None:
        avail = kb.get("MemFree", 0) + kb.get("Buffers", 0) + kb.get("Cached", 0)
    return total, max(0, total - avail)


def parse_kv(text):
    """'key value' lines (cpu.stat, memory.stat) as {key: int}."""
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def parse_proc_cgroup(text):
    """{controller: path} from /proc/self/cgroup; the cgroup v2 entry is under ''."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for name in parts[1].split(",") if parts[1] else [""]:
                out[name] = parts[2]
    return out


def in_container(cgroups, markers=("/.dockerenv", "/run/.containerenv")):
    """True in Docker/Podman/Kubernetes/LXC: a marker file or a container cgroup path."""
    if any(os.path.exists(m) for m in markers):
        return True
    return any(_CONTAINER_PATH.search(p) for p in cgroups.values())


def cpu_limit_v1(quota, period, ncpu):
    """CPUs a v1 cgroup may use: cfs quota/period, else ``ncpu``."""
    if quota is not None and period and int(quota) > 0:
        return min(ncpu, int(quota) / int(period))
    return ncpu


def cpu_limit_v2(cpu_max, ncpu):
    """CPUs a v2 cgroup may use from cpu.max ('max 100000' or '50000 100000')."""
    parts = (cpu_max or "max").split()
    if parts[0] != "max" and len(parts) == 2 and int(parts[1]) > 0:
        return min(ncpu, int(parts[0]) / int(parts[1]))
    return ncpu


def thermal_zones(root=THERMAL):
    """{zone type: celsius} of every thermal zone; duplicate types get a .N suffix."""
    temps = {}
    for zone in sorted(glob.glob(os.path.join(root, "thermal_zone*")), key=_zone_index):
        raw = (read(os.path.join(zone, "temp")) or "").strip()
        if not raw.lstrip("-").isdigit():
            continue
        celsius = int(raw) / 1000.0
        if not -100 < celsius < 250:  # a sensor that reports garbage
            continue
        name = (read(os.path.join(zone, "type")) or "").strip() or os.path.basename(zone)
        key, n = name, 1
        while key in temps:
            key, n = f"{name}.{n}", n + 1
        temps[key] = round(celsius, 1)
    return temps


def _zone_index(path):
    digits = re.sub(r"\D", "", os.path.basename(path))
    return int(digits) if digits else 0


def parse_nvidia_smi(text):
    """(util %, mem used bytes, mem total bytes) over all GPUs from
    ``--query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits``."""
    utils, used, total = [], [], []
    for line in text.splitlines():
        cols = [c.strip() for c in line.split(",")]
        if len(cols) != 3:
            continue
        for col, into in zip(cols, (utils, used, total)):  # noqa: B905 (nodes may run < 3.10)
            try:
                into.append(float(col))
            except ValueError:  # "[N/A]" on boards with shared memory
                pass
    util = round(sum(utils) / len(utils), 1) if utils else None
    return (
        util,
        int(sum(used) * 2**20) if used else None,
        int(sum(total) * 2**20) if total else None,
    )


def parse_tegrastats(line):
    """GPU load % from one tegrastats line ('GR3D_FREQ 45%' or 'GR3D_FREQ 45%@[...]')."""
    m = re.search(r"GR3D_FREQ (\d+)%", line or "")
    return float(m.group(1)) if m else None


def parse_rknpu_load(text):
    """Mean NPU load % from /sys/kernel/debug/rknpu/load ('Core0: 12%, Core1: 0%, ...')."""
    loads = [int(x) for x in re.findall(r"(\d+)\s*%", text or "")]
    return round(sum(loads) / len(loads), 1) if loads else None


def parse_npu_smi(text):
    """AI Core usage % from ``npu-smi info -t usages -i ID``."""
    m = re.search(r"Aicore\s+Usage\s+Rate\s*\(%\)\s*:\s*(\d+)", text or "", re.I)
    return float(m.group(1)) if m else None


def pct(prev, cur):
    """100 * d(busy) / d(total) of two (busy, total) pairs, clamped to 0..100; None if unusable."""
    if prev is None or cur is None:
        return None
    d_busy, d_total = cur[0] - prev[0], cur[1] - prev[1]
    if d_total <= 0 or d_busy < 0:
        return None
    return round(min(100.0, max(0.0, 100.0 * d_busy / d_total)), 2)


def net_rates(prev, cur, dt):
    """{iface: [rx_bps, tx_bps]}; an interface that is new or whose counters went back: None."""
    rates = {}
    for iface, (rx, tx) in sorted(cur.items()):
        old = prev.get(iface) if prev else None
        if old is None or dt <= 0 or rx < old[0] or tx < old[1]:
            rates[iface] = [None, None]
        else:
            rates[iface] = [round((rx - old[0]) / dt, 1), round((tx - old[1]) / dt, 1)]
    return rates


def net_totals(rates):
    """Sums of rx and tx rates over every interface but lo (None when none has a rate)."""
    rx = [r[0] for i, r in rates.items() if i != "lo" and r[0] is not None]
    tx = [r[1] for i, r in rates.items() if i != "lo" and r[1] is not None]
    return (round(sum(rx), 1) if rx else None, round(sum(tx), 1) if tx else None)


# ---------------------------------------------------------------- the node


class Scope:
    """Where CPU and memory come from: the host's /proc, or this container's cgroup."""

    def __init__(self, cgroup_root=CGROUP):
        self.cgroups = parse_proc_cgroup(read("/proc/self/cgroup") or "")
        self.root = cgroup_root
        self.v2 = os.path.exists(os.path.join(cgroup_root, "cgroup.controllers"))
        self.kind = "cgroup" if in_container(self.cgroups) else "host"
        self.ncpu = float(len(os.sched_getaffinity(0)))

    def _dir(self, controller):
        """The cgroup folder of ``controller`` (v1), or the unified one (v2)."""
        if self.v2:
            return self.root + self.cgroups.get("", "/").rstrip("/")
        path = self.cgroups.get(controller, "/")
        nested = os.path.join(self.root, controller) + path.rstrip("/")
        return nested if os.path.isdir(nested) else os.path.join(self.root, controller)

    def ident(self):
        return self.kind + ":" + (self.cgroups.get("cpuacct") or self.cgroups.get("", ""))

    def cpu(self, mono):
        """A (busy, total) counter pair: jiffies on a host, CPU-seconds in a cgroup."""
        if self.kind == "host":
            return parse_proc_stat(read("/proc/stat") or "")
        if self.v2:
            d = self._dir("")
            usage = parse_kv(read(d + "/cpu.stat")).get("usage_usec")
            cpus = cpu_limit_v2(read(d + "/cpu.max"), self.ncpu)
            return None if usage is None else (usage / 1e6, mono * cpus)
        raw = read(self._dir("cpuacct") + "/cpuacct.usage")
        cpu = self._dir("cpu")
        quota, period = read(cpu + "/cpu.cfs_quota_us"), read(cpu + "/cpu.cfs_period_us")
        cpus = cpu_limit_v1(quota, period, self.ncpu)
        return None if raw is None else (int(raw) / 1e9, mono * cpus)

    def memory(self):
        """(total, used) bytes: the cgroup's limit and usage less inactive page cache."""
        host_total, host_used = parse_meminfo(read("/proc/meminfo") or "")
        if self.kind == "host":
            return host_total, host_used
        d = self._dir("memory")
        if self.v2:
            usage, limit = read(d + "/memory.current"), read(d + "/memory.max")
            inactive = parse_kv(read(d + "/memory.stat")).get("inactive_file", 0)
        else:
            usage, limit = read(d + "/memory.usage_in_bytes"), read(d + "/memory.limit_in_bytes")
            stat = parse_kv(read(d + "/memory.stat"))
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        if usage is None:
            return host_total, host_used
        total = host_total
        if limit and limit.strip().isdigit() and int(limit) < min(UNLIMITED, host_total):
            total = int(limit)
        return total, max(0, int(usage) - inactive)


def counters(scope):
    mono = time.monotonic()
    return {
        "boot": (read("/proc/sys/kernel/random/boot_id") or "").strip(),
        "scope": scope.ident(),
        "mono": mono,
        "cpu": scope.cpu(mono),
        "net": parse_net_dev(read("/proc/net/dev") or ""),
    }


def load_state(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_state(path, state):
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, path)  # two collectors at once: each file is whole
    except OSError:
        pass  # read-only: every sample takes its own short delta


def usable(prev, cur):
    if not prev or prev.get("boot") != cur["boot"] or prev.get("scope") != cur["scope"]:
        return False
    return MIN_DT_S <= cur["mono"] - prev.get("mono", 0) <= MAX_AGE_S


def run(*cmd, timeout=10):
    if not shutil.which(cmd[0]):
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def tegrastats_line(timeout=2.0):
    """One line of tegrastats (it streams); None if it is absent or silent."""
    if not shutil.which("tegrastats"):
        return None
    try:
        proc = subprocess.Popen(
            ["tegrastats", "--interval", "100"], stdout=subprocess.PIPE, text=True
        )
    except OSError:
        return None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        return proc.stdout.readline() if ready else None
    finally:
        proc.kill()
        proc.wait()


def jetson_gpu_load():
    """A Jetson GPU's load %: sysfs (per mille), else one line of tegrastats."""
    for pattern in JETSON_GPU_LOAD:
        for path in glob.glob(pattern):
            raw = (read(path) or "").strip()
            if raw.isdigit():
                return int(raw) / 10.0
    if os.path.exists("/etc/nv_tegra_release"):
        return parse_tegrastats(tegrastats_line())
    return None


def accelerators():
    """gpu_util_pct, gpu_mem_used, gpu_mem_total, npu_util_pct: None where absent."""
    out = dict.fromkeys(("gpu_util_pct", "gpu_mem_used", "gpu_mem_total", "npu_util_pct"))
    smi = run(
        "nvidia-smi",
        "--query-gpu=utilization.gpu,memory.used,memory.total",
        "--format=csv,noheader,nounits",
    )
    if smi:
        out["gpu_util_pct"], out["gpu_mem_used"], out["gpu_mem_total"] = parse_nvidia_smi(smi)
    if out["gpu_util_pct"] is None:
        out["gpu_util_pct"] = jetson_gpu_load()
    out["npu_util_pct"] = parse_rknpu_load(read(RKNPU_LOAD))
    if out["npu_util_pct"] is None and shutil.which("npu-smi"):
        ids = re.findall(r"NPU ID\s*:\s*(\d+)", run("npu-smi", "info", "-l") or "")
        loads = [parse_npu_smi(run("npu-smi", "info", "-t", "usages", "-i", i)) for i in ids]
        loads = [x for x in loads if x is not None]
        out["npu_util_pct"] = round(sum(loads) / len(loads), 1) if loads else None
    return out


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path, timeout=5):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def docker_get(path, sock=DOCKER_SOCK):
    conn = _UnixHTTP(sock)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"docker API {path}: HTTP {resp.status}")
    return json.loads(body)


def containers(sock=DOCKER_SOCK, digests=False):
    """EVC-managed containers (label evc.managed=true): name, image, state, restarts, the
    model it serves (label evc.model.name), and with ``digests`` the repo digests of the
    image it runs (one more API call each, for `evc fleet status`).

    Through the Docker API socket (no docker CLI start-up per sample); [] without Docker.
    """
    if not os.path.exists(sock):
        return []
    try:
        found = docker_get(
            "/containers/json?all=1&filters=" + quote(json.dumps({"label": [MANAGED_LABEL]})),
            sock,
        )
        out = []
        for c in found[:MAX_CONTAINERS]:
            info = docker_get(f"/containers/{c['Id']}/json", sock)
            entry = {
                "name": info["Name"].lstrip("/"),
                "image": info["Config"].get("Image"),
                "model": (info["Config"].get("Labels") or {}).get(MODEL_LABEL),
                "state": info["State"].get("Status", "unknown"),
                "restarts": info.get("RestartCount"),
            }
            if digests:
                image = docker_get("/images/" + quote(info["Image"], safe="") + "/json", sock)
                entry["digests"] = (image.get("RepoDigests") or [])[:MAX_CONTAINERS]
            out.append(entry)
    except (OSError, ValueError, KeyError):
        return []
    return sorted(out, key=lambda c: c["name"])


def sha256_of(path):
    """Hex sha256 of a file's bytes, None when it is absent or unreadable."""
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def logged_in(registry_address, config=None):
    """Whether Docker's client config holds a login for ``registry_address`` (where
    `evc cert push` puts the node's pull credential); the secret is never read out."""
    config = config or os.path.join(os.path.expanduser("~"), ".docker", "config.json")
    try:
        with open(config) as f:
            auths = json.load(f).get("auths") or {}
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(auths, dict) and registry_address in auths


def fleet_state(registry_address, sock=DOCKER_SOCK):
    """What `evc fleet status` compares with the database: the EVC containers (with the
    digests they run), the registry CA's checksum, whether the node is logged in and
    holds a queue credential."""
    certs = os.path.join("/etc/docker/certs.d", registry_address)
    return {
        "containers": containers(sock, digests=True),
        "ca_sha256": sha256_of(os.path.join(certs, "ca.crt")),
        "credential": logged_in(registry_address),
        # the pull-mode credential (cert_push.yml): the node then runs a puller per model
        "queue_credential": os.path.exists("/etc/evc/queue/queue.json"),
    }


def compact_json(value):
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def sample(state_file, disk_path="/"):
    """One sample: every metrics column but node/at, plus ``containers`` and ``scope``.

    ``temps`` and ``net`` come as compact JSON text, the form the metrics table
    stores, so the controller's bulk ingestion stores them as they are.
    """
    scope = Scope()
    cur = counters(scope)
    prev = load_state(state_file)
    if not usable(prev, cur):
        time.sleep(FIRST_DELTA_S)
        prev, cur = cur, counters(scope)
    save_state(state_file, cur)
    rates = net_rates(prev["net"], cur["net"], cur["mono"] - prev["mono"])
    rx, tx = net_totals(rates)
    mem_total, mem_used = scope.memory()
    disk = shutil.disk_usage(disk_path)
    temps = thermal_zones()
    load1, load5, load15 = os.getloadavg()
    return {
        "scope": scope.kind,
        "cpu_pct": pct(prev["cpu"], cur["cpu"]),
        "load1": round(load1, 2),
        "load5": round(load5, 2),
        "load15": round(load15, 2),
        "mem_total": mem_total,
        "mem_used": mem_used,
        "mem_pct": round(100.0 * mem_used / mem_total, 2) if mem_total else None,
        "disk_total": disk.total,
        "disk_used": disk.used,
        "disk_pct": round(100.0 * disk.used / disk.total, 2) if disk.total else None,
        "temp_max_c": max(temps.values()) if temps else None,
        "temps": compact_json(temps) if temps else None,
        "net_rx_bps": rx,
        "net_tx_bps": tx,
        "net": compact_json(rates),
        **accelerators(),
        "containers": containers(),
    }


def main(argv=None):
    """One JSON object on stdout: ``{"sample": ...}``, or with ``--registry-address``
    ``{"fleet": ...}``; a failure is one line on stderr and exit 1."""
    import argparse

    parser = argparse.ArgumentParser(description="one telemetry sample, or the fleet state")
    parser.add_argument("--state-file", default="/var/lib/evc/telemetry.json")
    parser.add_argument("--disk-path", default="/")
    parser.add_argument("--registry-address")
    args = parser.parse_args(argv)
    what = "fleet state" if args.registry_address else "telemetry sample"
    try:
        if args.registry_address:  # fleet_status.yml: the node's state, no metrics
            result = {"fleet": fleet_state(args.registry_address)}
        else:
            result = {"sample": sample(args.state_file, args.disk_path)}
    except Exception as exc:  # report, never a traceback
        print(f"{what} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
