"""Model images: size, latency inside the container, cold build vs warm rebuild, one run.

Builds, through `evc model build` in a temporary workspace, four images side by side:
yolo-onnx and ultralytics (torch) from the same YOLOv8n .pt (saved from ultralytics'
bundled yolov8.yaml: random weights, so it detects nothing, but every image goes
through the whole pre-process / model / NMS path), and the pretrained face-haar and
face-blaze (MediaPipe's BlazeFace on LiteRT, weights out of MediaPipe's wheel).

Targets (issue 5): the yolo-onnx image at most 1/3 the size of the ultralytics+torch
image of the same model; a warm rebuild (`--force`, unchanged model) under 20 s.

- Cold: every build starts FROM a fresh copy of the model base (the base plus a unique
  label), so no layer cached by an earlier build applies. The wheelhouse cache
  (~/.cache/evc/wheels) is kept between runs; the table says when a build downloaded it
  (ultralytics: PyPI's CUDA torch, about 3 GB, a 6 GB image; the run takes 10-15 min).
  Warm: the median of ROUNDS interleaved `--force` rebuilds (ultralytics: one).
- Latency: `evc-infer` in each image (`docker run --rm --network none`, no CPU limit)
  over 20 JPEGs (five skimage.data pictures at four widths), ROUNDS interleaved runs;
  the medians of its summary.json p50, p95 and throughput. Then once per lab node
  profile (issue 20), the CPU and memory limits of `evc lab up --profile` on the
  container, for every image but ultralytics: what a Raspberry Pi, a NUC or an Orin of
  the lab would see.
- Per arch (amd64, arm64): the Python packages each edge runtime's image installs, as
  downloaded (the wheelhouse) and unpacked, for the model base's Python and C library;
  the arm64 images themselves are issue 16.
- `--no-torch` leaves the ultralytics image out (and the size target with it).
- Removes every image built on its base, the base copy and the workspace at the end.
"""

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import uuid
import zipfile
from pathlib import Path

import docker.errors
from _util import EVC, run, timed

from evc.cache import cache_dir
from evc.engine import docker_client, ensure_base_image, ensure_image
from evc.lab.nodes import PROFILES
from evc.model.build import probe_base
from evc.model.runtimes import Runtime, wheelhouse

# image name: (runtime, weights file in the temp folder or None)
BUILDS = {
    "yolo": ("yolo-onnx", "yolov8n.pt"),
    "torch": ("ultralytics", "yolov8n.pt"),
    "faces": ("face-haar", None),
    "blaze": ("face-blaze", None),
}
EDGE = ("yolo", "faces", "blaze")  # the images meant for CPU edge nodes
ROUNDS = 3
COMMON = ("python", "numpy", "pillow", "evc_infer")  # versions every image reports
SAVE_PT = """
import shutil, sys
from pathlib import Path
import ultralytics
from ultralytics import YOLO
dest = Path(sys.argv[1])
shutil.copy(Path(ultralytics.__file__).parent / "cfg/models/v8/yolov8.yaml", dest / "yolov8n.yaml")
YOLO(str(dest / "yolov8n.yaml")).save(str(dest / "yolov8n.pt"))  # the n in the name picks the scale
"""


def make_inputs(folder: Path) -> None:
    from PIL import Image
    from skimage import data

    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"):
        img = Image.fromarray(getattr(data, name)())
        for width in (320, 640, 960, 1280):
            size = (width, round(img.height * width / img.width))
            img.resize(size).save(folder / f"{name}-{width}.jpg", quality=90)


def fresh_base(client):
    """The model base with a unique label: a new image id, so no earlier layer cache applies."""
    base, _ = ensure_image(client, "model-base", ensure_base_image(client)[0])
    tag = f"evc-bench/model-base:{uuid.uuid4().hex[:12]}"
    dockerfile = io.BytesIO(f"FROM {base}\n".encode())
    return client.images.build(fileobj=dockerfile, tag=tag, labels={"evc.bench": tag}, rm=True)[0]


def remove_built_on(client, base_id: str) -> None:
    """Remove the leaves of the image tree over the base (docker prunes their untagged
    parents: the model images and the cached build stages), then the base."""
    parent = {i.id: i.attrs["Parent"] for i in client.images.list(all=True)}

    def built_on(image_id: str) -> bool:
        while image_id := parent.get(image_id):
            if image_id == base_id:
                return True
        return False

    for leaf in set(parent) - set(parent.values()):
        if built_on(leaf):
            client.images.remove(leaf, force=True)
    with contextlib.suppress(docker.errors.ImageNotFound):  # gone if someone pruned images
        client.images.remove(base_id, force=True)


def wheelhouses() -> set[Path]:
    return set((cache_dir() / "wheels").glob("*/.complete"))


def build(env: dict, name: str, base: str, weights: Path | None, force: bool) -> tuple[float, dict]:
    cmd = EVC + ["model", "build", name, "--runtime", BUILDS[name][0], "--version", "1",
                 "--base-image", base, "--json"]  # fmt: skip
    cmd += ["--weights", str(weights)] if weights else []
    cmd += ["--force"] if force else []
    wall, out = run(cmd, env)
    return wall, json.loads(out)


def infer(image: str, inputs: Path, out: Path, limits: tuple = ()) -> dict:
    out.chmod(0o777)  # the images run as uid 10001
    run(["docker", "run", "--rm", "--network", "none", *limits, "-v", f"{inputs}:/in:ro",
         "-v", f"{out}:/out", image, "--input", "/in", "--output", "/out"])  # fmt: skip
    return json.loads((out / "summary.json").read_text())


def profile_latency(built: dict, inputs: Path, tmp: Path) -> dict[str, dict[str, dict]]:
    """Each edge image's summary under each lab profile's CPU and memory limits."""
    out = {}
    for profile in PROFILES.values():
        limits = ("--cpus", str(profile.cpus), "--memory", f"{int(profile.mem_gib * 1024)}m")
        for name in EDGE:
            if name in built:
                (folder := tmp / f"out-{name}-{profile.name}").mkdir()
                summary = infer(built[name]["image"], inputs, folder, limits)
                out.setdefault(name, {})[profile.name] = summary
    return out


def unpacked_mb(wheels: list[Path]) -> float:
    """What the wheels take once installed (their files, uncompressed)."""
    return sum(i.file_size for w in wheels for i in zipfile.ZipFile(w).infolist()) / 1e6


def packages_per_arch(python: str, libc: str) -> dict[str, dict[str, tuple[float, float]]]:
    """runtime -> arch -> (wheelhouse MB, unpacked MB) of the packages its image installs
    (pip itself left out); the wheel face-blaze takes its weights from is not installed."""
    sizes = {}
    for name in EDGE:
        rt = Runtime.load(BUILDS[name][0])
        for arch in ("amd64", "arm64"):
            folder = wheelhouse(rt.requirements, arch, python, libc)
            wheels = [w for w in folder.glob("*.whl") if not w.name.startswith("pip-")]
            mb = sum(w.stat().st_size for w in wheels) / 1e6
            sizes.setdefault(BUILDS[name][0], {})[arch] = (mb, unpacked_mb(wheels))
    return sizes


def latency(built: dict, inputs: Path, tmp: Path) -> dict[str, dict]:
    """Median over ROUNDS interleaved runs of each image's p50/p95 ms and images/s."""
    runs = {name: [] for name in built}
    for r in range(ROUNDS):
        for name, model in built.items():
            (out := tmp / f"out-{name}-{r}").mkdir()
            runs[name].append(infer(model["image"], inputs, out))
    return {
        name: {
            "p50": statistics.median(s["latency_ms"]["p50"] for s in summaries),
            "p95": statistics.median(s["latency_ms"]["p95"] for s in summaries),
            "per_s": statistics.median(s["throughput"] for s in summaries),
            "ok": min(s["ok"] for s in summaries),
            "versions": {k: v for k, v in summaries[0]["versions"].items() if k not in COMMON},
        }
        for name, summaries in runs.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="leave ultralytics out")
    if parser.parse_args().no_torch:
        del BUILDS["torch"]
    client = docker_client()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"EVC_HOME": str(tmp / "ws")}
        timed(EVC + ["init", str(tmp / "ws")], env)
        timed(EVC + ["registry", "init", "--host", "127.0.0.1"], env)  # an address to tag with
        timed([sys.executable, "-c", SAVE_PT, str(tmp)], {"YOLO_OFFLINE": "1"})
        make_inputs(tmp / "in")
        base = fresh_base(client)
        cold, warm, built, downloaded = {}, {}, {}, {}

        def build_image(name: str, force: bool) -> float:
            weights = BUILDS[name][1]
            seconds, built[name] = build(env, name, base.tags[0], weights and tmp / weights, force)
            return seconds

        try:
            for name in BUILDS:
                before = wheelhouses()
                cold[name] = build_image(name, force=False)
                downloaded[name] = wheelhouses() != before
            for r in range(ROUNDS):  # interleaved; the 6 GB image once (over a minute each)
                for name in BUILDS:
                    if r == 0 or name != "torch":
                        warm.setdefault(name, []).append(build_image(name, force=True))
            lat = latency(built, tmp / "in", tmp)
            profiles = profile_latency(built, tmp / "in", tmp)
            packages = packages_per_arch(*probe_base(client, base.tags[0]))
        finally:
            remove_built_on(client, base.id)
    warm = {name: statistics.median(times) for name, times in warm.items()}
    code = report(built, cold, warm, downloaded, lat, base.attrs["Size"] / 1e6)
    report_edge(profiles, packages)
    return code


def report_edge(profiles: dict, packages: dict) -> None:
    print("\nevc-infer under each lab profile's limits (20 images, one run): p50 ms  images/s")
    print(f"{'image':13s}" + "".join(f"  {p.name} ({p.cpus:g} CPU)".ljust(22) for p in
                                     PROFILES.values()))  # fmt: skip
    for name, by_profile in profiles.items():
        cells = [f"{s['latency_ms']['p50']:7.1f} {s['throughput']:8.1f}".ljust(20)
                 for s in by_profile.values()]  # fmt: skip
        print(f"{BUILDS[name][0]:13s}  " + "  ".join(cells))
    print("\nPython packages in the image per arch: wheelhouse MB / unpacked MB")
    print(f"{'runtime':13s} {'amd64':>15s} {'arm64':>15s}")
    for runtime, by_arch in packages.items():
        cells = [f"{by_arch[a][0]:6.0f} / {by_arch[a][1]:5.0f}" for a in ("amd64", "arm64")]
        print(f"{runtime:13s} " + " ".join(f"{c:>15s}" for c in cells))


def report(built, cold, warm, downloaded, lat, base_mb) -> int:
    mb = {n: m["size_bytes"] / 1e6 for n, m in built.items()}
    print(f"{'image':13s} {'size MB':>8s} {'cold s':>7s} {'warm s':>7s}  wheelhouse")
    for name, (runtime, _) in BUILDS.items():
        wheels = "downloaded by the cold build" if downloaded[name] else "cached"
        print(f"{runtime:13s} {mb[name]:8.0f} {cold[name]:7.1f} {warm[name]:7.1f}  {wheels}")
    print(f"(`evc model build` wall time, selftest included; warm: median of {ROUNDS},")
    print(f"ultralytics 1; yolo-onnx exports the .pt each time; the base is {base_mb:.0f} MB)")
    print(f"\nevc-infer, 20 images, median of {ROUNDS} interleaved runs")
    print(f"{'image':13s}  ok  p50 ms  p95 ms images/s  versions")
    for name, (runtime, _) in BUILDS.items():
        x = lat[name]
        row = f"{x['ok']:3d} {x['p50']:7.1f} {x['p95']:7.1f} {x['per_s']:8.1f}"
        print(f"{runtime:13s} {row}  {x['versions']}")
    size_ok = True
    if "torch" in BUILDS:
        ratio = mb["yolo"] / mb["torch"]
        above = (mb["yolo"] - base_mb) / (mb["torch"] - base_mb)
        p50 = lat["yolo"]["p50"] / lat["torch"]["p50"]
        print(f"\nsize yolo-onnx/ultralytics {ratio:.3f} (above the base {above:.3f})")
        print(f"p50 latency yolo-onnx/ultralytics {p50:.2f}")
        size_ok = ratio <= 1 / 3
        print(f"size target <= 0.33: {'PASS' if size_ok else 'FAIL'}")
    speedup = cold["yolo"] / warm["yolo"]
    verdict = "PASS" if warm["yolo"] < 20 else "FAIL"
    print(f"yolo-onnx warm rebuild {warm['yolo']:.1f} s ({speedup:.1f}x faster than cold)")
    print(f"warm rebuild target < 20 s: {verdict}")
    return 0 if size_ok and warm["yolo"] < 20 else 1


if __name__ == "__main__":
    sys.exit(main())
