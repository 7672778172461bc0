"""Where a foreign arch's variant is built (an enrolled builder, else emulation), and
what each arch's build gets: its own base image and its own pip requirements (the
ultralytics runtime for Jetson: NVIDIA's torch on arm64, PyPI's CUDA torch on amd64).

The builder's real path (SSH tunnel, build there, image back) is tested in the lab:
tests/lab/test_mixed_fleet_lab.py."""

import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import pytest

from evc import db as evcdb
from evc.errors import EVCError, UsageError
from evc.model import build, builder, catalogue
from evc.model.runtimes import IMAGE_REQUIREMENTS, Runtime, install_line
from evc.progress import Progress
from tests.conftest import evc
from tests.unit.fake_fleet import DEVICES, add_devices

JETSON_BASE = "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
CUDA_BASE = "nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04"
JETSON_TORCH = (
    "torch @ https://pypi.jetson-ai-lab.io/jp6/cu126/+f/abc/"
    "torch-2.8.0-cp310-cp310-linux_aarch64.whl"
)


class Said(Progress):
    def __init__(self):
        self.lines = []

    def log(self, message: str) -> None:
        self.lines.append(message)


def _builders(ws, *rows):
    """DEVICES plus ``rows`` (name, host, port, status) as arm64 builders."""
    extra = [
        {**DEVICES[0], "name": name, "host": host, "port": port, "status": status,
         "role": "builder"}
        for name, host, port, status in rows
    ]  # fmt: skip
    workers = [{**d, "port": 22, "role": "worker"} for d in DEVICES]
    add_devices(ws, evcdb.workspace_db(ws), time.time(), [*workers, *extra])


def test_builders_of_the_arch_online_first(workspace):
    """node1 is an arm64 worker: never a builder; of two arm64 builders the online one is
    tried first; none builds amd64."""
    _builders(workspace, ("b-off", "10.0.0.21", 22, "offline"), ("b-on", "10.0.0.22", 22, "online"))
    assert [d["name"] for d in builder.candidates(workspace, "arm64")] == ["b-on", "b-off"]
    assert builder.candidates(workspace, "amd64") == []


def test_an_unreachable_builder_falls_back_to_emulation_and_says_why(workspace, monkeypatch):
    """A builder whose SSH port refuses: --on builder fails naming it; auto builds under
    emulation and says so (the SSH client is the real one, with strict host keys)."""
    _builders(workspace, ("jet", "127.0.0.1", 1, "online"))
    with ExitStack() as stack, pytest.raises(EVCError) as refused:
        build._place(workspace, "builder", "arm64", stack, Said())
    assert "no arm64 builder answers (jet: SSH to root@127.0.0.1:1 failed" in str(refused.value)
    monkeypatch.setattr(build, "check_arch", lambda arch: None)  # no binfmt needed here
    said = Said()
    with ExitStack() as stack:
        assert build._place(workspace, "auto", "arm64", stack, said) == (None, "emulated")
    assert said.lines[-1].startswith(
        "building the arm64 variant under qemu emulation here (jet: SSH to root@127.0.0.1:1"
    )
    with ExitStack() as stack:  # the controller's own arch never leaves it
        assert build._place(workspace, "builder", "amd64", stack, said) == (None, "controller")


def test_the_ssh_tunnel_checks_host_keys_against_the_workspace_pins(workspace):
    device = {"user": "root", "host": "10.0.0.9", "port": 2222}
    cmd = builder._ssh_forward(workspace, device, Path("/tmp/x/docker.sock"))
    assert f"UserKnownHostsFile={workspace.known_hosts}" in cmd
    assert "StrictHostKeyChecking=yes" in cmd and "BatchMode=yes" in cmd
    assert cmd[-2:] == ["/tmp/x/docker.sock:/var/run/docker.sock", "root@10.0.0.9"]


def test_per_arch_requirements_replace_the_runtimes_line():
    rt = Runtime.load("ultralytics")
    amd64 = rt.requirements_for("amd64")
    assert "torch==2.9.1" in amd64 and "torchvision==0.24.1" in amd64  # PyPI's CUDA build
    assert not any(line.startswith("torch>") for line in amd64)
    arm64 = rt.requirements_for("arm64", [JETSON_TORCH, "extra-pkg==1"])
    assert arm64.index(JETSON_TORCH) == rt.requirements.index("torch>=2.1,<3")
    assert arm64[-1] == "extra-pkg==1"
    assert len(arm64) == len(rt.requirements) + len(IMAGE_REQUIREMENTS) + 1
    assert [line for line in amd64 if line.startswith("redis")] == ["redis>=5,<9"]  # the puller
    assert install_line(JETSON_TORCH) == "torch"  # the image's pip has no network


@pytest.mark.parametrize(
    "item, expected",
    [("torch==2.9.1", "expected ARCH=LINE"), ("riscv=torch", "expected ARCH=LINE"),
     ("arm64=torch @@ x", "is not a pip requirement"),
     ("arm64=torch @ file:///root/.evc/keys/id_ed25519", "must be https"),
     ("arm64=torch @ http://x/torch-2-cp310-cp310-linux_aarch64.whl", "must be https")],
)  # fmt: skip
def test_a_bad_requirement_is_a_usage_error(item, expected):
    with pytest.raises(UsageError, match=expected):
        build.arch_requirements([item], ["amd64", "arm64"])


class _Engine:
    """Stands in for a Docker client after the build: the built image, by id."""

    def __init__(self):
        self.images = SimpleNamespace(get=lambda _id: SimpleNamespace(attrs={}, tag=print))


def test_ultralytics_for_jetson_and_x86_each_arch_gets_its_base_and_torch(
    workspace, tmp_path, monkeypatch
):
    """--base-image and --requirement per arch reach each variant's wheelhouse, its
    requirements.txt and the build's BASE, with the runtime's own Dockerfile: the
    Jetson (L4T, Python 3.10) variant gets NVIDIA's torch, the x86 one PyPI's CUDA
    torch 2.9.1. The engine and the wheel download are stood in for (no GPU, no
    Docker Hub, no multi-GB torch here); the real builds are the lab's."""
    monkeypatch.setattr(build.registry, "load", lambda ws: SimpleNamespace(address="reg:5001"))
    monkeypatch.setattr(build.engine, "docker_client", _Engine)
    monkeypatch.setattr(build, "check_arch", lambda arch, emulated=True: None)
    monkeypatch.setattr(build, "_place", lambda ws, on, arch, stack, p: (None, "emulated"))
    pythons = {JETSON_BASE: ("3.10", "2.35"), CUDA_BASE: ("3.12", "2.39")}
    monkeypatch.setattr(build, "probe_base", lambda client, base: pythons[base])
    fetched, built = {}, {}

    def wheelhouse(requirements, arch, python, libc, progress):
        fetched[arch] = (requirements, python, libc)
        (tmp_path / arch).mkdir()
        (tmp_path / arch / "pip-25.0-py3-none-any.whl").write_bytes(b"")
        return tmp_path / arch

    def docker_build(client, context, base, labels, arch, progress):
        built[arch] = {"base": base, "labels": labels,
                       "requirements": (context / "requirements.txt").read_text().split(),
                       "dockerfile": (context / "Dockerfile").read_text()}  # fmt: skip
        return f"sha256:{arch}"

    monkeypatch.setattr(build, "wheelhouse", wheelhouse)
    monkeypatch.setattr(build, "_docker_build", docker_build)
    monkeypatch.setattr(build, "_selftest", lambda client, image: {"selftest": "ok"})
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"not unpickled: staged as is")
    options = build.BuildOptions(
        name="jetdet", runtime="ultralytics", version="1", weights=weights, arch="amd64,arm64",
        base_image=f"arm64={JETSON_BASE},amd64={CUDA_BASE}",
        requirement=[f"arm64={JETSON_TORCH}", "arm64=torchvision==0.23.0"],
    )  # fmt: skip
    models = build.build(workspace, options)
    assert [(m.arch, m.built_on) for m in models] == [("amd64", "emulated"), ("arm64", "emulated")]
    assert built["arm64"]["base"] == JETSON_BASE and built["amd64"]["base"] == CUDA_BASE
    assert fetched["arm64"][1:] == ("3.10", "2.35") and fetched["amd64"][1:] == ("3.12", "2.39")
    assert JETSON_TORCH in fetched["arm64"][0] and "torchvision==0.23.0" in fetched["arm64"][0]
    assert "torch==2.9.1" in fetched["amd64"][0] and "torchvision==0.24.1" in fetched["amd64"][0]
    assert "torch" in built["arm64"]["requirements"]  # the wheel the wheelhouse holds
    assert "torch==2.9.1" in built["amd64"]["requirements"]
    assert not any("torch>=" in r for a in built for r in built[a]["requirements"])
    assert all("--no-deps" in b["dockerfile"] for b in built.values())  # ultralytics' own
    assert built["arm64"]["labels"]["evc.model.built_on"] == "emulated"
    assert [m.arch for m in catalogue.variants(workspace, "jetdet:1")] == ["amd64", "arm64"]


def test_the_cli_refuses_a_bad_requirement_before_building(workspace):
    proc = evc("model", "build", "det", "--runtime", "ultralytics", "--version", "1",
               "--requirement", "arm64=torch @ file:///etc/shadow", check=2)  # fmt: skip
    assert "--requirement" in proc.stderr and "must be https" in proc.stderr
