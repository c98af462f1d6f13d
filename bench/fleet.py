"""A fleet on one machine: caption throughput with 1, 2 and 3 devices on Dask, and deploy time to 3 devices
vs 1.

The devices are hosts of kind `local`, each its own workdir (its own models, runtime venv and Dask worker
process), so what is measured is the fleet's machinery: the scheduler here, a worker per device, images
sent as bytes, results written here. Each worker's encoder is an NPU-class stand-in (a wait that holds no
core: bench/npu_class_worker.py, a Dask `--preload`) of two classes: ViT-B/32's NPU_FLOOR_MS (bench/caption.py's)
and ViT-L/14@336's 88.5 ms (AXERA-TECH/LibCLIP's published AX650 latency of cnclip_vit_l14_336px_vision_u16u8);
decoding, preprocess and ranking run for real on the workers. Models: ViT-B/32 shapes, random weights,
onnxruntime compile. Each rate is the marginal one between a run over a quarter of the folder and one over
all of it (what both spend once cancels). Targets (issue 28): >= 2.6x the images/s of one device with three;
deploy to 3 <= 1.3x the time of 1. Every device here shares this machine's cores, which real devices do
not: the table gives the CPU per image and the ceiling it sets.

    python bench/fleet.py [--images 600] [--rounds 3] [--json]
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from harness import DEFAULT_CACHE, REPO, arguments, emit, verdict
from inputs import NPU_FLOOR_MS, photo_folder

from deploy.fleet_caption import WORKER, FleetCaptionJob, FleetProgress, caption_on_fleet
from pipeline.graph import StageGraph
from pipeline.runner import Outcome, RunRequest, run
from runtime.captioning import CaptionRun
from stages import ALL_STAGES
from stages.config import PipelineConfig, load_config

THROUGHPUT_TARGET = 2.6
DEPLOY_TARGET = 1.3
DEVICES = ("dev1", "dev2", "dev3")
ROOT = DEFAULT_CACHE / "fleet"
PRELOAD = Path(__file__).resolve().parent / "npu_class_worker.py"
VIT_L14_336_MS = 88.475  # AXERA-TECH/LibCLIP README, AX650: cnclip_vit_l14_336px_vision_u16u8.axmodel


def fleet_config() -> PipelineConfig:
    """Full-size artifacts (built once, cached) and three local devices."""
    ROOT.mkdir(parents=True, exist_ok=True)
    data = {
        "model": {"id": "builtin:random-vit-b-32"},
        "artifacts": str(ROOT / "artifacts"),
        "hosts": {name: {"kind": "local", "workdir": str(ROOT / name)} for name in DEVICES},
        "devices": [{"name": name, "host": name} for name in DEVICES],
        # Speed does not depend on the weights: loose thresholds keep random weights passing.
        "stages": {
            "verify": {"images": str(REPO / "data/images"), "min_cosine": 0.999, "max_abs_diff": 1.0},
            "compile": {"target": "onnxruntime", "min_cosine": 0.9},
            "smoke-test": {"runs": 3, "min_cosine": 0.9, "min_top1_agreement": 0},
        },
    }
    path = ROOT / "fleet.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return load_config(path)


def fetch(config: PipelineConfig, devices: tuple[str, ...]) -> float:
    """Seconds of a fetch of the whole set to `devices`, from empty models dirs (the bench's own)."""
    for name in devices:
        shutil.rmtree(ROOT / name / "models", ignore_errors=True)
    started = time.perf_counter()
    outcome = run(config.with_devices(",".join(devices)), StageGraph(ALL_STAGES), RunRequest(targets=("fetch",)))[-1]
    if outcome.outcome is not Outcome.RAN:
        raise SystemExit(f"fetch failed: {outcome.summary}")
    return time.perf_counter() - started


@dataclass
class Rate:
    """A fleet's marginal rate: images/s and CPU per image between a short and a long run."""

    images_per_s: float
    worker_cpu_ms: float  # every worker's CPU per image (decode, preprocess, rank, Dask's own)
    controller_cpu_ms: float  # this process's (scheduler, client, reading and writing)


def run_once(config: PipelineConfig, devices: tuple[str, ...], photos: Path) -> tuple[int, float, float, float]:
    """Caption the folder: images, and at its last caption the seconds since the start, the workers' CPU
    seconds and this process's."""
    out = ROOT / "captions"
    shutil.rmtree(out, ignore_errors=True)
    total = len(list(photos.glob("*.jpg")))
    done: list[tuple[float, float, float]] = []
    answered = [0]
    started, controller = time.perf_counter(), time.process_time()

    def on_image(_: Path, progress: FleetProgress) -> None:
        answered[0] += 1
        if answered[0] == total:
            workers = sum(_cpu_seconds(ROOT / name / WORKER.pid_name) for name in devices)
            done.append((time.perf_counter() - started, workers, time.process_time() - controller))

    job = FleetCaptionJob(CaptionRun(photos, out), preload=(str(PRELOAD),))
    summary = caption_on_fleet(config.with_devices(",".join(devices)), job, on_image)
    if summary.failed or summary.captioned != total or not done:
        raise SystemExit(f"captioning failed: {summary.failed[:3]}")
    return total, *done[-1]


def throughput(config: PipelineConfig, devices: tuple[str, ...], short: Path, long: Path) -> Rate:
    """The rate between a short and a long run: what both spend once (starting the workers, the first
    batches' start, the last batches' end) cancels, and answers arriving a batch at a time while other
    batches are half done cannot bias the count."""
    few, many = run_once(config, devices, short), run_once(config, devices, long)
    images = many[0] - few[0]
    return Rate(images / (many[1] - few[1]), (many[2] - few[2]) / images * 1e3, (many[3] - few[3]) / images * 1e3)


def _cpu_seconds(pid_file: Path) -> float:
    """User + system CPU of the process in `pid_file` (a local device's worker), from /proc."""
    fields = Path(f"/proc/{pid_file.read_text().strip()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    args = arguments(__doc__, images=600, rounds=3)
    config = fleet_config()
    fetch(config, DEVICES)  # builds every upstream stage once
    deploy = {n: statistics.median(fetch(config, DEVICES[:n]) for _ in range(args.rounds)) for n in (1, 3)}
    short, long = photo_folder((1024, 768), args.images // 4), photo_folder((1024, 768), args.images)
    classes = {
        f"ViT-B/32 class ({NPU_FLOOR_MS:g} ms)": NPU_FLOOR_MS,
        f"ViT-L/14@336 class ({VIT_L14_336_MS:g} ms)": VIT_L14_336_MS,
    }
    rates: dict[str, dict[int, Rate]] = {}
    for name, wait_ms in classes.items():
        os.environ["NPU_CLASS_MS"] = f"{wait_ms:g}"  # read by the preload, in the workers (local hosts)
        rates[name] = {}
        for n in (1, 2, 3):
            runs = sorted(
                (throughput(config, DEVICES[:n], short, long) for _ in range(args.rounds)),
                key=lambda r: r.images_per_s,
            )
            rates[name][n] = runs[args.rounds // 2]
    figures: dict = {"images": args.images, "cores": os.cpu_count(), "encoders": {}}
    rows = []
    for name, by_devices in rates.items():
        one = by_devices[1].images_per_s
        cpu_per_image = by_devices[3].worker_cpu_ms + by_devices[3].controller_cpu_ms
        figures["encoders"][name] = {
            "images_per_s": {n: round(r.images_per_s, 1) for n, r in by_devices.items()},
            "ratio_3": round(by_devices[3].images_per_s / one, 2),
            "cpu_ms_per_image": {
                n: {"workers": round(r.worker_cpu_ms, 1), "controller": round(r.controller_cpu_ms, 1)}
                for n, r in by_devices.items()
            },
            # On one machine every device's CPU work shares its cores: no more images/s than this.
            "cpu_ceiling_images_per_s": round((os.cpu_count() or 1) * 1e3 / cpu_per_image, 1),
        }
        rows += [
            (
                f"caption, {name}, {n} device(s)",
                f"{r.images_per_s:.1f} img/s",
                f"{r.images_per_s / one:.2f}x",
                f"{r.worker_cpu_ms:.1f} + {r.controller_cpu_ms:.1f}",
            )
            for n, r in by_devices.items()
        ]
    figures["deploy_s"] = {n: round(seconds, 2) for n, seconds in deploy.items()}
    figures["deploy_ratio_3"] = round(deploy[3] / deploy[1], 2)
    rows += [
        (f"deploy (fetch), {n} device(s)", f"{deploy[n]:.2f} s", f"{deploy[n] / deploy[1]:.2f}x", "") for n in (1, 3)
    ]
    ratios = {name: e["ratio_3"] for name, e in figures["encoders"].items()}
    figures["meets_target"] = {
        **{f"throughput {name}": ratio >= THROUGHPUT_TARGET for name, ratio in ratios.items()},
        "deploy": figures["deploy_ratio_3"] <= DEPLOY_TARGET,
    }
    ceilings = ", ".join(f"{name}: {e['cpu_ceiling_images_per_s']} img/s" for name, e in figures["encoders"].items())
    emit(
        figures,
        args.json,
        f"fleet on one machine ({os.cpu_count()} cores): {args.images // 4} then {args.images} JPEGs of 1024x768, "
        f"medians of {args.rounds}",
        ("what", "figure", "vs 1 device", "CPU ms/image: workers + controller"),
        rows,
        f"CPU ceiling with every device on this machine's cores ({ceilings}). Targets: 3 devices >= "
        f"{THROUGHPUT_TARGET}x images/s, deploy to 3 <= {DEPLOY_TARGET}x: "
        + "; ".join(f"{what} {verdict(met)}" for what, met in figures["meets_target"].items()),
    )


if __name__ == "__main__":
    main()
