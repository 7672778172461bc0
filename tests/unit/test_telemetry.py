"""Telemetry without a fleet: the node module's parsers, durations, liveness, ingestion,
queries, export, prune, the monitor's ticks and its unit file."""

import csv
import importlib.util
import io
import json
import time

import pytest

from evc import db as evcdb
from evc import devices, monitor
from evc import logs as telemetry
from evc.ansible import HostResult, RunResult
from evc.console import sparkline
from evc.errors import UsageError
from evc.resources import data_dir
from tests.conftest import evc, write_settings


def _module():
    path = data_dir("playbooks") / "files" / "evc_telemetry.py"
    spec = importlib.util.spec_from_file_location("evc_telemetry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


node = _module()

PROC_STAT = """\
cpu  4705 356 584 3699 23 23 0 0 0 0
cpu0 1393280 32966 572056 13343292 6130 0 17875 0 23933 0
intr 114930548 113199788 3 0 5 263 0 4 [... lots more numbers ...]
"""
NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop ...
    lo: 1000 10 0 0 0 0 0 0 1000 10 0 0 0 0 0 0
  eth0:  187945     110    0    0    0     0          0         0    13793      86    0 0 0 0 0 0
docker0: 0 0 0 0 0 0 0 0 0 0 0 2 0 0 0 0
"""
MEMINFO = """\
MemTotal:       16310112 kB
MemFree:         1234567 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
Cached:          2000000 kB
"""
CGROUP_V1 = """\
12:cpu,cpuacct:/docker/abc
4:memory:/docker/abc
0::/docker/abc
"""


# ------------------------------------------------------------ node-side parsing


def test_proc_stat_busy_and_total_count_iowait_as_idle():
    busy, total = node.parse_proc_stat(PROC_STAT)
    assert total == 4705 + 356 + 584 + 3699 + 23 + 23
    assert busy == total - 3699 - 23
    assert node.pct((0, 0), (busy, total)) == round(100 * busy / total, 2)
    assert node.pct((10, 100), (60, 200)) == 50.0
    assert node.pct((10, 100), (10, 100)) is None  # no time passed
    assert node.pct(None, (1, 2)) is None
    with pytest.raises(ValueError):
        node.parse_proc_stat("intr 1 2 3\n")


def test_net_dev_counters_and_rates_against_the_previous_sample():
    counters = node.parse_net_dev(NET_DEV)
    assert counters == {"lo": (1000, 1000), "eth0": (187945, 13793), "docker0": (0, 0)}
    later = {"lo": (3000, 3000), "eth0": (187945 + 2000, 13793 + 500), "wlan0": (5, 5)}
    rates = node.net_rates(counters, later, 2.0)
    assert rates["eth0"] == [1000.0, 250.0] and rates["lo"] == [1000.0, 1000.0]
    assert rates["wlan0"] == [None, None]  # new interface: no rate yet
    assert node.net_totals(rates) == (1000.0, 250.0)  # lo is not traffic
    reset = node.net_rates({"eth0": (500, 500)}, {"eth0": (10, 10)}, 1.0)
    assert reset["eth0"] == [None, None]  # counters went back (driver reload)
    assert node.net_totals({"lo": [1.0, 1.0]}) == (None, None)


def test_meminfo_used_is_total_less_available():
    assert node.parse_meminfo(MEMINFO) == (16310112 * 1024, (16310112 - 12000000) * 1024)
    old_kernel = MEMINFO.replace("MemAvailable:   12000000 kB\n", "")
    used = (16310112 - 1234567 - 100000 - 2000000) * 1024
    assert node.parse_meminfo(old_kernel) == (16310112 * 1024, used)


def test_thermal_zones_every_zone_named_and_garbage_skipped(tmp_path):
    for i, (kind, temp) in enumerate(
        [("acpitz", "45000"), ("x86_pkg_temp", "61500"), ("acpitz", "47000"),
         ("broken", "-273150"), ("empty", "")]
    ):  # fmt: skip
        zone = tmp_path / f"thermal_zone{i}"
        zone.mkdir()
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(temp + "\n")
    (tmp_path / "thermal_zone10").mkdir()  # no temp file at all
    (tmp_path / "cooling_device0").mkdir()
    temps = node.thermal_zones(str(tmp_path))
    assert temps == {"acpitz": 45.0, "x86_pkg_temp": 61.5, "acpitz.1": 47.0}
    assert node.thermal_zones(str(tmp_path / "none")) == {}


def test_cgroup_paths_and_container_detection():
    groups = node.parse_proc_cgroup(CGROUP_V1)
    assert groups == {"cpu": "/docker/abc", "cpuacct": "/docker/abc", "memory": "/docker/abc",
                      "": "/docker/abc"}  # fmt: skip
    assert node.in_container(groups, markers=())
    host = node.parse_proc_cgroup("0::/user.slice/user-0.slice/session-3.scope\n")
    assert not node.in_container(host, markers=())  # a systemd session is not a container
    assert node.in_container({"": "/"}, markers=(__file__,))  # /.dockerenv-style marker


def test_cpu_limits_from_quota():
    assert node.cpu_limit_v1("50000", "100000", 2.0) == 0.5
    assert node.cpu_limit_v1("-1", "100000", 2.0) == 2.0
    assert node.cpu_limit_v1("400000", "100000", 2.0) == 2.0  # quota above the CPUs there
    assert node.cpu_limit_v2("150000 100000", 4.0) == 1.5
    assert node.cpu_limit_v2("max 100000", 4.0) == 4.0
    assert node.cpu_limit_v2(None, 4.0) == 4.0


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v1_scope_reads_the_containers_own_cpu_and_memory(tmp_path):
    _write(tmp_path / "cpuacct/docker/abc/cpuacct.usage", "2500000000\n")
    _write(tmp_path / "cpu/docker/abc/cpu.cfs_quota_us", "50000\n")
    _write(tmp_path / "cpu/docker/abc/cpu.cfs_period_us", "100000\n")
    _write(tmp_path / "memory/docker/abc/memory.usage_in_bytes", str(300 * 2**20))
    _write(tmp_path / "memory/docker/abc/memory.limit_in_bytes", str(2**30))
    _write(tmp_path / "memory/docker/abc/memory.stat", f"total_inactive_file {100 * 2**20}\n")
    scope = node.Scope(str(tmp_path))
    scope.cgroups, scope.kind, scope.v2 = node.parse_proc_cgroup(CGROUP_V1), "cgroup", False
    scope.cgroups["cpuacct"] = scope.cgroups["cpu"] = "/docker/abc"
    assert scope.cpu(10.0) == (2.5, 5.0)  # CPU-seconds used, capacity at 0.5 CPU
    assert scope.memory() == (2**30, 200 * 2**20)
    # Two seconds later with 0.5 CPU-seconds more: 50 % of the quota.
    assert node.pct(scope.cpu(10.0), (3.0, 6.0)) == 50.0


def test_cgroup_v2_scope(tmp_path):
    _write(tmp_path / "cgroup.controllers", "cpu memory\n")
    _write(tmp_path / "box/cpu.stat", "usage_usec 4000000\nuser_usec 3000000\n")
    _write(tmp_path / "box/cpu.max", "200000 100000\n")
    _write(tmp_path / "box/memory.current", str(64 * 2**20))
    _write(tmp_path / "box/memory.max", "max\n")
    _write(tmp_path / "box/memory.stat", f"inactive_file {16 * 2**20}\n")
    scope = node.Scope(str(tmp_path))
    assert scope.v2
    scope.cgroups, scope.kind, scope.ncpu = {"": "/box"}, "cgroup", 4.0
    assert scope.cpu(3.0) == (4.0, 6.0)
    total, used = scope.memory()
    assert used == 48 * 2**20 and total > 2**20  # no limit: the machine's memory


def test_accelerator_parsers():
    smi = "35, 1024, 8192\n65, 2048, 8192\n"
    assert node.parse_nvidia_smi(smi) == (50.0, 3072 * 2**20, 16384 * 2**20)
    assert node.parse_nvidia_smi("0, [N/A], [N/A]\n") == (0.0, None, None)
    assert node.parse_nvidia_smi("") == (None, None, None)
    line = "RAM 2345/7620MB (lfb 2x4MB) CPU [5%@729,3%@729] EMC_FREQ 0% GR3D_FREQ 45%@[305] VIC"
    assert node.parse_tegrastats(line) == 45.0
    assert node.parse_tegrastats("RAM 1/2MB") is None
    assert node.parse_rknpu_load("NPU load:  Core0: 30%, Core1: 10%, Core2:  2%,\n") == 14.0
    assert node.parse_rknpu_load("NPU load: 7%\n") == 7.0
    assert node.parse_rknpu_load(None) is None
    usages = "        Memory Usage Rate(%)           : 6\n        Aicore Usage Rate(%)   : 42\n"
    assert node.parse_npu_smi(usages) == 42.0
    assert node.parse_npu_smi("nothing") is None


def test_previous_sample_is_used_only_when_it_fits():
    cur = {"boot": "b", "scope": "host:", "mono": 100.0}
    assert node.usable({"boot": "b", "scope": "host:", "mono": 90.0}, cur)
    assert not node.usable(None, cur)
    assert not node.usable({"boot": "other", "scope": "host:", "mono": 90.0}, cur)  # rebooted
    assert not node.usable({"boot": "b", "scope": "cgroup:/x", "mono": 90.0}, cur)
    assert not node.usable({"boot": "b", "scope": "host:", "mono": 99.95}, cur)  # too close
    assert not node.usable({"boot": "b", "scope": "host:", "mono": -5000.0}, cur)  # too old


def test_sample_here_is_sane_and_keeps_its_counters(tmp_path):
    state = tmp_path / "state" / "telemetry.json"
    first = node.sample(str(state))
    assert state.is_file() and json.loads(state.read_text())["net"]
    second = node.sample(str(state), str(tmp_path))
    for s in (first, second):
        assert 0 <= s["cpu_pct"] <= 100
        assert 0 < s["mem_used"] <= s["mem_total"]
        assert 0 < s["disk_used"] <= s["disk_total"]
        assert s["scope"] in ("host", "cgroup") and isinstance(s["containers"], list)
        assert set(telemetry.METRIC_COLUMNS[2:]) <= set(s)
    assert node.containers(str(tmp_path / "no.sock")) == []


# ------------------------------------------------------------ controller side


@pytest.mark.parametrize(
    "text,seconds",
    [("90s", 90), ("15m", 900), ("1h", 3600), ("30d", 30 * 86400), ("2w", 1209600),
     ("45", 45), ("1.5h", 5400), (" 2H ", 7200)],
)  # fmt: skip
def test_durations(text, seconds):
    assert telemetry.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "1x", "-1h", "0d", "1h30m", "one day"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(UsageError, match=r"--since .*expected a positive duration such as"):
        telemetry.parse_duration(text, "--since")


def test_liveness_state_machine():
    status, missed, seen = "online", 0, []
    for answered in (False, False, False, False, True, False):
        status, missed = devices.next_status(missed, answered, offline_after=3)
        seen.append(status)
    assert seen == ["unreachable", "unreachable", "offline", "offline", "online", "unreachable"]
    assert devices.next_status(0, False, offline_after=1) == ("offline", 1)


def _device(db, name):
    db["devices"].insert(
        {"name": name, "host": "10.0.0.1", "added_at": 1.0, "status": "online", "last_seen": 1.0}
    )


def _run(**states):
    hosts = {h: HostResult(h, s) for h, s in states.items()}
    return RunResult("telemetry.yml", "all", "r", "/a", 0.0, 1.0, 0, hosts)


def test_record_liveness_counts_misses_and_records_each_change(workspace):
    db = evcdb.workspace_db(workspace)
    for name in ("n1", "n2", "n3"):
        _device(db, name)
    for t in (10.0, 20.0, 30.0):
        devices.record_liveness(db, _run(n1="ok", n2="unreachable", n3="failed"), 3, now=t)
    rows = {r["name"]: r for r in db["devices"].rows}
    assert (rows["n1"]["status"], rows["n1"]["missed"], rows["n1"]["last_seen"]) == (
        "online",
        0,
        30.0,
    )
    assert (rows["n2"]["status"], rows["n2"]["missed"], rows["n2"]["last_seen"]) == (
        "offline",
        3,
        1.0,
    )
    assert rows["n3"]["status"] == "online"  # it answered; only its task failed
    events = devices.record_liveness(db, _run(n2="ok", n1="skipped", ghost="ok"), 3, now=40.0)
    assert events == [{"node": "n2", "from_state": "offline", "to_state": "online", "at": 40.0}]
    history = [(r["from_state"], r["to_state"], r["at"]) for r in
               db.query("select * from node_events where node = 'n2' order by id")]  # fmt: skip
    assert history == [("online", "unreachable", 10.0), ("unreachable", "offline", 30.0),
                       ("offline", "online", 40.0)]  # fmt: skip
    assert db["node_events"].count == 3


def _sample(node_name, at, cpu=10.0, **extra):
    return {"node": node_name, "at": at, "cpu_pct": cpu, "mem_total": 100, "mem_used": 40,
            "mem_pct": 40.0, "temps": {"cpu": 50.0}, "net": {"eth0": [1.0, 2.0]},
            **extra}  # fmt: skip


def test_ingest_counts_rows_stores_json_and_containers(workspace):
    db = evcdb.workspace_db(workspace)
    containers = [{"name": "evc-model-faces", "image": "r/faces:1", "state": "running",
                   "restarts": 2}]  # fmt: skip
    samples = [_sample("n1", 1.0, containers=containers), _sample("n2", 1.0), _sample("n1", 2.0)]
    assert telemetry.ingest(db, samples) == 3
    assert telemetry.ingest(db, samples[:1] + [_sample("n2", 2.0)]) == 1  # (n1, 1.0) is stored
    assert db["metrics"].count == 4
    row = next(db.query("select * from metrics where node = 'n1' and at = 1.0"))
    assert json.loads(row["temps"]) == {"cpu": 50.0} and json.loads(row["net"]) == {"eth0": [1, 2]}
    assert row["gpu_util_pct"] is None and row["cpu_pct"] == 10.0
    (c,) = db["container_status"].rows
    assert (c["node"], c["name"], c["state"], c["restarts"]) == (
        "n1",
        "evc-model-faces",
        "running",
        2,
    )
    assert telemetry.ingest(db, []) == 0


def test_show_latest_values_series_and_containers(workspace):
    db = evcdb.workspace_db(workspace)
    _device(db, "n1")
    _device(db, "n2")
    now = time.time()
    box = [{"name": "evc-model-a", "image": "i", "state": "exited", "restarts": 0}]
    telemetry.ingest(db, [_sample("n1", now - 3500, cpu=90.0), _sample("n1", now - 10, cpu=20.0,
                          containers=box), _sample("n1", now - 7200, cpu=5.0)])  # fmt: skip
    views = {v["name"]: v for v in telemetry.show(workspace, since_s=3600, buckets=12)}
    n1 = views["n1"]
    assert n1["sample"]["cpu_pct"] == 20.0 and n1["sample"]["temps"] == {"cpu": 50.0}
    assert n1["containers"] == [{"name": "evc-model-a", "image": "i", "state": "exited",
                                 "restarts": 0}]  # fmt: skip
    cpu = n1["series"]["cpu_pct"]
    assert len(cpu) == 12 and cpu[0] == 90.0 and cpu[-1] == 20.0 and cpu.count(None) == 10
    assert views["n2"]["sample"] is None and views["n2"]["containers"] == []
    assert [v["name"] for v in telemetry.show(workspace, "n2")] == ["n2"]
    with pytest.raises(UsageError, match="No device named 'n9'"):
        telemetry.show(workspace, "n9")
    assert sparkline([0, 50, 100, None]) == "▁▅█ "


def test_export_csv_whole_file_and_filters(workspace, tmp_path):
    db = evcdb.workspace_db(workspace)
    _device(db, "n1")
    now = time.time()
    telemetry.ingest(db, [_sample("n1", now - 7200), _sample("n1", now - 60), _sample("n2", now)])
    out = tmp_path / "m.csv"
    assert telemetry.export_csv(workspace, out) == 3
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["node"] for r in rows] == ["n1", "n1", "n2"]
    assert rows[0]["time"].endswith("Z") and json.loads(rows[0]["net"]) == {"eth0": [1.0, 2.0]}
    assert telemetry.export_csv(workspace, out, since_s=3600, node="n1") == 1
    assert len(out.read_text().splitlines()) == 2
    assert not list(tmp_path.glob(".m.csv.*"))  # no temporary file left behind
    with pytest.raises(UsageError, match="does not exist"):
        telemetry.export_csv(workspace, tmp_path / "no" / "m.csv")


def test_prune_deletes_only_old_rows_in_batches(workspace, monkeypatch):
    monkeypatch.setattr(telemetry, "PRUNE_BATCH", 7)
    db = evcdb.workspace_db(workspace)
    now = time.time()
    box = [{"name": "c", "image": "i", "state": "running", "restarts": 0}]
    old = [_sample("n1", now - 40 * 86400 + i, containers=box) for i in range(20)]
    telemetry.ingest(db, old + [_sample("n1", now - 60, containers=box)])
    db["node_events"].insert_all(
        [{"node": "n1", "from_state": "online", "to_state": "offline", "at": t}
         for t in (now - 31 * 86400, now - 3600)]
    )  # fmt: skip
    result = telemetry.prune(workspace, 30 * 86400)
    assert result["deleted"] == {
        "metrics": 20,
        "container_status": 20,
        "node_events": 1,
        "action_events": 0,
    }
    assert db["metrics"].count == db["container_status"].count == db["node_events"].count == 1


# ------------------------------------------------------------ monitor and CLI


def test_next_tick_skips_overrun_ticks():
    assert monitor.next_tick(0.0, 5.0, 3.0) == (5.0, 0)
    assert monitor.next_tick(0.0, 5.0, 5.0) == (5.0, 0)
    assert monitor.next_tick(0.0, 5.0, 7.0) == (10.0, 1)  # round took 7 s: tick 5 is skipped
    assert monitor.next_tick(0.0, 5.0, 16.0) == (20.0, 3)


def test_systemd_unit_runs_this_evc_for_this_workspace(workspace):
    unit = monitor.systemd_unit(workspace, 15, "lab", offline_after=2)
    exec_start = next(ln for ln in unit.splitlines() if ln.startswith("ExecStart="))
    assert exec_start.split("=", 1)[1].startswith("/")
    assert exec_start.endswith("monitor lab --interval 15 --offline-after 2")
    assert f"Environment=EVC_HOME={workspace.root}" in unit
    assert "[Install]" in unit and "WantedBy=multi-user.target" in unit


@pytest.mark.parametrize(
    "args,match",
    [(["logs", "show", "--since", "1x"], "--since '1x'"),
     (["logs", "export", "--since", "0d"], "--since '0d'"),
     (["logs", "export", "--format", "xml"], "--format 'xml': expected one of csv"),
     (["db", "prune", "--older-than", "soon"], "--older-than 'soon'"),
     (["logs", "show", "--node", "ghost"], "No device named 'ghost'")],
)  # fmt: skip
def test_cli_bad_input_exits_2(workspace, args, match):
    proc = evc(*args, check=2)
    assert match in proc.stderr and "Traceback" not in proc.stderr


def test_cli_prune_and_export_on_an_empty_workspace(workspace):
    assert "metrics: 0 rows deleted" in evc("db", "prune", "--older-than", "30d", check=0).stdout
    assert evc("logs", "export", check=0).stdout.startswith("node,at,time,cpu_pct,")
    assert "monitor" in evc("--help", check=0).stdout


def test_offline_after_setting_is_checked(tmp_path):
    from evc.config import Workspace

    write_settings(tmp_path, "telemetry: {offline_after: 5}\n")
    assert Workspace.load(tmp_path).offline_after == 5
    write_settings(tmp_path, "telemetry: {offline_after: 0}\n")
    with pytest.raises(
        UsageError, match="telemetry.offline_after: 0 is not a number of missed checks"
    ):
        Workspace.load(tmp_path)


def test_monitor_outlives_a_failing_round_and_stops_on_sigterm(workspace, monkeypatch):
    import os
    import signal
    import threading

    calls = []

    def collect(ws, options):
        calls.append(time.monotonic())
        time.sleep(0.05)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return None

    monkeypatch.setattr(telemetry, "collect", collect)
    monkeypatch.setattr(monitor, "resolve_hosts", lambda inventory, target: ["n1"])
    reports = []
    summary = monitor.run(workspace, 0.01, rounds=4, on_round=reports.append)
    assert (summary.rounds, summary.failed_rounds, summary.stopped_by) == (4, 1, None)
    assert reports[1].error == "RuntimeError: the database went away"
    assert sum(r.skipped_ticks for r in reports) == summary.skipped_ticks > 0  # 50 ms > 10 ms

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, [os.getpid(), signal.SIGTERM])
    timer.start()
    heard = []
    summary = monitor.run(workspace, 0.1, on_signal=lambda name, again: heard.append(name))
    assert summary.stopped_by == "SIGTERM" and heard == ["SIGTERM"] and summary.rounds >= 1
    assert signal.getsignal(signal.SIGTERM) is before  # handlers given back


def test_the_node_script_prints_one_object_or_fails_on_one_line(tmp_path):
    """As telemetry.yml runs it (``python3 -c SOURCE ARGS``): a sample as JSON on stdout,
    its counters kept for the next; a failure is one stderr line and exit 1."""
    import subprocess
    import sys

    source = (data_dir("playbooks") / "files" / "evc_telemetry.py").read_text()
    state = tmp_path / "state.json"
    ran = subprocess.run([sys.executable, "-c", source, "--state-file", str(state)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0 and ran.stderr == "", ran.stderr
    sample = json.loads(ran.stdout)["sample"]
    assert 0 <= sample["cpu_pct"] <= 100 and sample["mem_total"] > 0 and state.exists()
    bad = subprocess.run(
        [sys.executable, "-c", source, "--state-file", str(state), "--disk-path", "/nonexistent"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("telemetry sample failed: FileNotFoundError")
    assert len(bad.stderr.splitlines()) == 1
