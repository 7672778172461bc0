"""One model version for amd64 and arm64 (issue 16): build time cold and warm, image
size and per-image latency per arch, and the arm64/amd64 factor.

On an amd64 controller the arm64 image builds and runs under qemu-user emulation (binfmt,
`make setup` registers it), as it does on the lab's arm64 nodes (which run their model
containers through the same emulation on the same kernel): emulated arm64 is expected to
be several times slower; the factor says how much. A real arm64 board runs native code.

Builds face-haar (`evc model build --arch ARCH`) in a temporary workspace:
- Cold: FROM a fresh copy of each arch's model base (a unique label: a new image id, so
  no cached layer applies); the wheelhouse cache (~/.cache/evc/wheels) is kept, and the
  table says whether the build downloaded it. The base images themselves (debootstrap,
  about 35 s for amd64 and 5 min for arm64 under emulation here) are built once and
  cached by content hash; the table says how long they took if this run built them.
- Warm: the median of ROUNDS `--force` rebuilds, interleaved.
- Latency: `evc-infer` in each image (`docker run --rm --network none`) over 20 JPEGs
  (five skimage pictures at four widths), the median of ROUNDS runs' p50/p95/images/s.
- `--builder`: instead, arm64 only: emulated here vs on a builder (an `rpi-arm64` lab
  node enrolled with role builder, in a lab of its own), each cold (the fresh base is
  copied to the builder first) and warm. That node's engine is the hybrid node's
  amd64 dockerd, so its build is emulated by the same kernel: this measures the
  builder path (SSH tunnel, context up, image back), not a native board's speed.
Removes what it built at the end.
"""

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from _util import EVC, bench_workspace, run, timed

from evc import engine
from evc.lab.network import free_subnet
from model_images import infer, make_inputs, remove_built_on, wheelhouses

ARCHES = ("amd64", "arm64")
ROUNDS = 2


def fresh_base(client, arch: str):
    """(model base copy with a unique label, seconds the base images took if built now)."""
    took = {}
    t = time.monotonic()
    base, built = engine.ensure_base_image(client, arch=arch)
    if built:
        took["base"] = time.monotonic() - t
    t = time.monotonic()
    model_base, built = engine.ensure_image(client, "model-base", base, arch=arch)
    if built:
        took["model-base"] = time.monotonic() - t
    tag = f"evc-bench/model-base-{arch}:{uuid.uuid4().hex[:12]}"
    foreign = arch != engine.native_arch()
    image = client.images.build(
        fileobj=io.BytesIO(f"FROM {model_base}\n".encode()), tag=tag, rm=True,
        labels={"evc.bench": tag}, platform=f"linux/{arch}" if foreign else None,
    )[0]  # fmt: skip
    return image, took


def build(env: dict, arch: str, base: str, force: bool, on: str = "auto") -> tuple[float, dict]:
    cmd = EVC + ["model", "build", "faces", "--runtime", "face-haar", "--version", "1",
                 "--arch", arch, "--base-image", base, "--on", on, "--json"]  # fmt: skip
    wall, out = run(cmd + (["--force"] if force else []), env)
    return wall, json.loads(out)


def on_builder(client, root: Path, base: str) -> tuple[float, list[float]]:
    """arm64 build seconds, cold and warm, on an rpi-arm64 lab node enrolled as builder."""
    lab = "mabuild"
    env = bench_workspace(root, lab, free_subnet(client, f"evc-{lab}", "172.30.0.0/24"))
    try:
        _, out = run(EVC + ["lab", "up", "--nodes", "1", "--profile", "rpi-arm64", "--json"], env)
        ip = json.loads(out)["nodes"][0]["ip"]
        timed(EVC + ["device", "remove", "node1"], env)
        timed(EVC + ["device", "add", "node1", "--host", ip, "--role", "builder", "--label",
                     f"lab={lab}"], env)  # fmt: skip
        cold, built = build(env, "arm64", base, force=False, on="builder")
        assert built["variants"][0]["built_on"] == "node1", built
        warm = [build(env, "arm64", base, force=True, on="builder")[0] for _ in range(ROUNDS)]
        return cold, warm
    finally:
        timed(EVC + ["lab", "down"], env)
        timed(EVC + ["registry", "down", "--purge"], env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder", action="store_true", help="arm64 on a lab builder too")
    args = parser.parse_args()
    client = engine.docker_client()
    if args.builder:
        return builder_vs_emulation(client)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"EVC_HOME": str(tmp / "ws")}
        timed(EVC + ["init", str(tmp / "ws")], env)
        timed(EVC + ["registry", "init", "--host", "127.0.0.1"], env)  # an address to tag with
        make_inputs(tmp / "in")
        bases, took, cold, warm, built, downloaded, lat = {}, {}, {}, {}, {}, {}, {}
        try:
            for arch in ARCHES:
                bases[arch], took[arch] = fresh_base(client, arch)
                before = wheelhouses()
                cold[arch], built[arch] = build(env, arch, bases[arch].tags[0], force=False)
                downloaded[arch] = wheelhouses() != before
            for _ in range(ROUNDS):
                for arch in ARCHES:
                    seconds, built[arch] = build(env, arch, bases[arch].tags[0], force=True)
                    warm.setdefault(arch, []).append(seconds)
            for r in range(ROUNDS):
                for arch in ARCHES:
                    (out := tmp / f"out-{arch}-{r}").mkdir()
                    lat.setdefault(arch, []).append(infer(built[arch]["image"], tmp / "in", out))
        finally:
            for image in bases.values():
                remove_built_on(client, image.id)
    print("face-haar, one version, per arch (arm64 under qemu-user emulation on "
          f"this {engine.native_arch()} machine)")  # fmt: skip
    print(f"{'arch':6} {'cold s':>7} {'warm s':>7} {'size MB':>8} {'p50 ms':>7} {'p95 ms':>7} "
          f"{'img/s':>6}  wheelhouse  base images timed")  # fmt: skip
    medians = {}
    for arch in ARCHES:
        p50 = statistics.median(s["latency_ms"]["p50"] for s in lat[arch])
        p95 = statistics.median(s["latency_ms"]["p95"] for s in lat[arch])
        per_s = statistics.median(s["throughput"] for s in lat[arch])
        medians[arch] = (statistics.median(warm[arch]), p50, per_s)
        timed_bases = ", ".join(f"{k} {v:.0f} s" for k, v in took[arch].items()) or "cached"
        print(f"{arch:6} {cold[arch]:7.1f} {medians[arch][0]:7.1f} "
              f"{built[arch]['size_bytes'] / 1e6:8.0f} {p50:7.0f} {p95:7.0f} {per_s:6.2f}  "
              f"{'downloaded' if downloaded[arch] else 'cached':10}  {timed_bases}")  # fmt: skip
    (w0, l0, t0), (w1, l1, t1) = medians["amd64"], medians["arm64"]
    print(f"arm64 / amd64: warm build {w1 / w0:.1f}x, p50 latency {l1 / l0:.1f}x, "
          f"throughput {t0 / t1:.1f}x lower")  # fmt: skip
    return 0


def builder_vs_emulation(client) -> int:
    """arm64 build seconds, emulated here and on a lab builder, cold and warm."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"EVC_HOME": str(tmp / "ws")}
        timed(EVC + ["init", str(tmp / "ws")], env)
        timed(EVC + ["registry", "init", "--host", "127.0.0.1"], env)
        base, _ = fresh_base(client, "arm64")
        try:
            here = [build(env, "arm64", base.tags[0], force=False, on="emulation")[0]]
            here += [build(env, "arm64", base.tags[0], True, "emulation")[0] for _ in range(ROUNDS)]
            cold, warm = on_builder(client, tmp / "bws", base.tags[0])
        finally:
            remove_built_on(client, base.id)
    print("face-haar arm64 build seconds (the lab builder's engine is emulated too)")
    print(f"emulated here: cold {here[0]:.1f}, warm {statistics.median(here[1:]):.1f}")
    print(f"lab builder:   cold {cold:.1f}, warm {statistics.median(warm):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
