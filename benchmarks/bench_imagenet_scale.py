"""The "imagenet_scale" benchmark: greedy imitation on ImageNet-size models (224x224, 1,000 classes).

For ResNet-50, MobileNetV2 and the ViT (vit_tiny), with random weights and random 224x224 images
standing in for ImageNet (generated batch by batch, as a dataset on disk would be read):
- time per unit in units of one full forward over the same calibration images (target: local
  imitation <= 3 forwards per unit), and peak memory at several calibration-set sizes (target:
  1,024 images <= 1.5x the peak at 64);
- candidate evaluation (global imitation's gated suffix runs, K candidates x B images) against
  plain inference of the whole model on as many images: FLOP rate of each (target >= 0.8x);
- world size 1 against 2 processes (torchrun, gloo on CPUs / NCCL on GPUs).

Every configuration runs in its own process (`python bench_imagenet_scale.py --child ...`), so
its peak memory is its own: peak RSS (ru_maxrss) on the CPU, torch.cuda.max_memory_allocated on
a GPU. With CUDA the sizes are the real ones: every unit, 64 / 256 / 1,024 images, local and
hybrid. On a CPU the same measurements are cut to fit (PLANS["cpu"]: the first units, hybrid on
MobileNetV2 only); `--quick` cuts them further for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from greedyprune import distributed  # noqa: E402
from greedyprune.greedy import PruneConfig, prune_model  # noqa: E402
from greedyprune.greedy.suffix import BatchSuffix  # noqa: E402
from greedyprune.greedy.surgery import UnitGraph  # noqa: E402
from greedyprune.host_memory import keep_freed_memory  # noqa: E402
from greedyprune.models import build_model  # noqa: E402

IMAGE_SIZE, CLASSES = 224, 1000
MODELS = ("resnet50", "mobilenet_v2", "vit_tiny")

# (model, method, images, units: None = all, batch); world sizes; candidate-throughput (K, B)
PLANS = {
    "cuda": dict(runs=[(m, method, n, None, 64) for m in MODELS for method in ("local", "hybrid")
                       for n in (64, 256, 1024)],
                 worlds=[(m, "local", 256, None, 64) for m in MODELS], candidates=(32, 64)),
    # a 2-core CPU: local imitation of the first units at 64 / 256 / 1,024 images, hybrid on one
    # MobileNetV2 unit with 16 images
    "cpu": dict(runs=[("resnet50", "local", n, 2, 32) for n in (64, 256, 1024)]
                + [("mobilenet_v2", "local", n, 2, 32) for n in (64, 256, 1024)]
                + [("vit_tiny", "local", n, 2, 32) for n in (64, 256, 1024)]
                + [("mobilenet_v2", "hybrid", 16, 1, 16)],
                worlds=[("mobilenet_v2", "local", 256, 2, 32)], candidates=(4, 16)),
    "quick": dict(runs=[("mobilenet_v2", "local", n, 1, 32) for n in (64, 128)], worlds=[], candidates=(2, 8)),
}
CHILD_TIMEOUT_S = 3600


class RandomImages:
    """`count` random 224x224 images in batches of `batch`, made when asked for (seeded by batch
    index, so every read gives the same images); a process takes its share of every batch."""

    def __init__(self, count: int, batch: int, share: tuple[int, int] = (0, 1)):
        self.count, self.batch, (self.rank, self.world) = count, batch, share

    def __len__(self) -> int:
        return -(-self.count // self.batch)

    def __getitem__(self, i: int) -> torch.Tensor:
        if not 0 <= i < len(self):
            raise IndexError(i)
        size = min(self.batch, self.count - i * self.batch)
        x = torch.randn(size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(i))
        return x[self.rank::self.world]


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_forward_seconds(model, images: RandomImages, device) -> float:
    """One forward of the model over every calibration image (no grad), batch by batch."""
    with torch.no_grad():
        model(images[0][:2].to(device))  # warm up
        synchronize(device)
        start = time.perf_counter()
        for x in images:
            model(x.to(device))
        synchronize(device)
    return time.perf_counter() - start


def candidate_throughput(model, device, k: int, b: int) -> dict:
    """FLOP rate of K gated candidates x B images through the suffix of the first unit (what global
    imitation runs per step) against plain inference of the model on K*B images."""
    x = RandomImages(b, b)[0].to(device)
    graph = UnitGraph(model, x[:2])
    unit = graph.units[0]
    engine = BatchSuffix(graph, unit, x, max_rows=k * b)
    gates = torch.rand(k, unit.channels, generator=torch.Generator().manual_seed(0)).to(device) * 2
    plain_x = x.repeat(k, 1, 1, 1)

    def timed(fn) -> tuple[float, int]:
        fn()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            fn()
        times = []
        for _ in range(3):
            synchronize(device)
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times), counter.get_total_flops()

    eval_s, eval_flops = timed(lambda: engine.evaluate(gates))
    plain_s, plain_flops = timed(lambda: model(plain_x))
    return dict(unit=unit.name, k=k, b=b, traced=engine.traced, candidate_s=eval_s, candidate_gflop=eval_flops / 1e9,
                plain_s=plain_s, plain_gflop=plain_flops / 1e9,
                candidate_rows_per_s=k * b / eval_s, plain_rows_per_s=k * b / plain_s,
                flop_rate_ratio=(eval_flops / eval_s) / (plain_flops / plain_s))


def child(args) -> dict:
    """One configuration in this process; its results as a dict (rank 0 prints them as JSON)."""
    if args.keep_freed_memory:
        keep_freed_memory()
    distributed.init_from_env()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=CLASSES, image_size=IMAGE_SIZE).eval().to(device)
    share = (distributed.rank(), distributed.world_size())
    images = RandomImages(args.images, args.batch, share)
    if args.throughput:
        return dict(model=args.model, device=str(device), **candidate_throughput(model, device, *args.throughput))
    forward_s = full_forward_seconds(model, images, device)
    # the cost model README quotes: plain removal of the inner units (a residual stream's unit is read
    # by several layers, so its Gram pass and export cost more)
    config = PruneConfig(method=args.method, width_ratio=0.5, fold="none", groups=("inner",))
    names = [u.name for u in UnitGraph(model, images[0][:2].to(device)).units if u.kind in config.groups]
    chosen = names if args.units is None else names[:args.units]
    start = time.perf_counter()  # batches stay on the host: prune_model moves each where the model is
    results = prune_model(model, images, config, units=chosen, progress=False)
    seconds = time.perf_counter() - start
    # Local imitation measures a unit's exported discrepancy in the next unit's Gram pass; the last
    # unit run measures its own with one more forward, once per run: timed apart, not per unit.
    final_s = results[-1].seconds.get("discrepancy", 0.0) if config.measured_on_export else 0.0
    per_unit = [r.seconds["total"] - (final_s if r is results[-1] else 0.0) for r in results]
    return dict(model=args.model, method=args.method, images=args.images, batch=args.batch, device=str(device),
                world=distributed.world_size(), threads=torch.get_num_threads(), units=len(chosen),
                units_in_model=len(names), forward_s=forward_s, prune_s=seconds, unit_s=per_unit,
                setup_s=seconds - sum(per_unit), parts=[r.seconds for r in results],
                forwards_per_unit=[s / forward_s for s in per_unit], final_discrepancy_forwards=final_s / forward_s,
                peak_mib=peak_memory_mib(device),
                widths=[(r.channels, r.width) for r in results])


def run_child(run: tuple, device: str, *, world: int = 1, throughput: tuple | None = None) -> dict:
    model, method, images, units, batch = run
    argv = [str(HERE / "bench_imagenet_scale.py"), "--child", "--model", model, "--method", method,
            "--images", str(images), "--batch", str(batch), "--device", device]
    if units is not None:
        argv += ["--units", str(units)]
    if throughput is not None:
        argv += ["--throughput", *map(str, throughput)]
    launcher = [sys.executable] if world == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     "--nproc_per_node", str(world)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    try:
        done = subprocess.run(launcher + argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return dict(model=model, method=method, images=images, world=world, failed=f"over {CHILD_TIMEOUT_S} s")
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        return dict(model=model, method=method, images=images, world=world, failed=tail)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(quick: bool) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = PLANS["quick" if quick else device]
    runs = [run_child(run, device) for run in plan["runs"]]
    worlds = [run_child(run, device, world=2) for run in plan["worlds"]]
    throughput = [run_child((m, "local", 64, None, 64), device, throughput=plan["candidates"])
                  for m in (MODELS if not quick else ("mobilenet_v2",))]
    return dict(device=torch.cuda.get_device_name() if device == "cuda" else "cpu", plan="quick" if quick else device,
                runs=runs, worlds=worlds, throughput=throughput)


def notes(section: dict) -> list[str]:
    if "extra" not in section:
        return []
    r = section["extra"]["result"]
    lines = [f"Device: {r['device']} (plan {r['plan']!r} in bench_imagenet_scale.py). Random weights, random "
             "224x224 images generated batch by batch; width ratio 0.5 per unit. Full forwards per unit: of "
             "each unit timed; a run also measures its last unit's exported discrepancy once (local imitation: "
             "one forward at the end of the run, in the last column; every other unit's comes from the next "
             "unit's Gram pass).", "",
             "| model | method | images | units timed | s per unit | full forwards per unit | peak MiB | once per run |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for run in r["runs"]:
        if "failed" in run:
            lines.append(f"| {run['model']} | {run['method']} | {run['images']} | failed: {run['failed']} | | | | |")
            continue
        units = f"{run['units']} of {run['units_in_model']}"
        fpu = " / ".join(f"{v:.2f}" for v in run["forwards_per_unit"])
        final = run.get("final_discrepancy_forwards", 0.0)
        lines.append(f"| {run['model']} | {run['method']} | {run['images']} | {units} | "
                     f"{statistics.mean(run['unit_s']):.1f} | {fpu} | {run['peak_mib']:,.0f} | "
                     f"{f'{final:.2f} forwards' if final > 0.01 else '-'} |")
    peaks = {}
    for run in r["runs"]:
        if "failed" not in run:
            peaks.setdefault((run["model"], run["method"]), {})[run["images"]] = run["peak_mib"]
    growth = [f"{m} {method}: {p[max(p)] / p[min(p)]:.2f}x ({max(p)} vs {min(p)} images)"
              for (m, method), p in peaks.items() if len(p) > 1]
    if growth:
        lines += ["", "Peak memory, most images against fewest (target <= 1.5x): " + "; ".join(growth) + "."]
    if r["throughput"]:
        lines += ["", "| model | first unit | K x B | candidate GFLOP/s | plain inference GFLOP/s | ratio (target >= 0.8) |",
                  "|---|---|---:|---:|---:|---:|"]
        for t in r["throughput"]:
            if "failed" in t:
                lines.append(f"| {t['model']} | failed: {t['failed']} | | | | |")
                continue
            lines.append(f"| {t['model']} | {t['unit']} | {t['k']} x {t['b']} | "
                         f"{t['candidate_gflop'] / t['candidate_s']:.1f} | {t['plain_gflop'] / t['plain_s']:.1f} | "
                         f"{t['flop_rate_ratio']:.2f} |")
    for w in r["worlds"]:
        one = next((run for run in r["runs"] if "failed" not in run and (run["model"], run["method"], run["images"])
                    == (w["model"], w["method"], w["images"])), None)
        if "failed" in w or one is None:
            continue
        lines += ["", f"World size: {w['model']} {w['method']}, {w['images']} images, {w['units']} units: "
                      f"{statistics.mean(one['unit_s']):.1f} s per unit in 1 process ({one['threads']} threads), "
                      f"{statistics.mean(w['unit_s']):.1f} s in each of 2 processes ({w['threads']} thread(s) each); "
                      f"peak {one['peak_mib']:,.0f} vs {w['peak_mib']:,.0f} MiB per process."]
    return lines


def _benchmark():
    from harness import Benchmark

    return Benchmark(
        name="imagenet_scale",
        title="ImageNet scale: time per unit, peak memory, candidate throughput, world size",
        about="Greedy imitation at 224x224 on ResNet-50, MobileNetV2 and vit_tiny (random weights and images): "
              "time per unit in full forwards over the same calibration images, peak memory as the calibration "
              "set grows, global imitation's candidate evaluation against plain inference, 1 vs 2 processes.",
        extra=measure, notes=notes)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", action="store_true", help="measure one configuration and print it as JSON")
    p.add_argument("--model", choices=MODELS, default="resnet50")
    p.add_argument("--method", choices=("local", "hybrid"), default="local")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--units", type=int, default=None, help="only the first this many units (default: all)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--throughput", type=int, nargs=2, metavar=("K", "B"), default=None,
                   help="measure candidate evaluation of K candidates x B images instead")
    p.add_argument("--plain-malloc", dest="keep_freed_memory", action="store_false",
                   help="leave glibc's malloc as it is (the CLI keeps freed memory for reuse; host_memory.py)")
    p.add_argument("--quick", action="store_true")
    return p


if __name__ == "__main__":
    arguments = _parser().parse_args()
    if arguments.child:
        result = child(arguments)
        if distributed.is_main():
            print(json.dumps(result))
        distributed.finish()
    else:
        print(json.dumps(measure(arguments.quick), indent=1))
else:
    BENCHMARK = _benchmark()
