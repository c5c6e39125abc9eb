"""Measured peak allocated memory against the analytic model, for every boundary probe and every
grid point committed under results/ (run from the repository root)."""

import glob
import statistics

from pytest_dlmbench.grid import BenchPoint
from pytest_dlmbench.memory_model import predicted_max_batch, predicted_peak_bytes
from pytest_dlmbench.models import get_spec
from pytest_dlmbench.paradigms import DecodeOptions, make_paradigm
from pytest_dlmbench.store import read_run_document


H100_BYTES = 85_031_714_816  # torch.cuda.get_device_properties(0).total_memory on the H100 80GB HBM3


def phases(info: dict) -> tuple:
    spec = get_spec(info["model"])
    paradigm = make_paradigm(info["paradigm"], DecodeOptions(tpf=3.0), info["strategy"])
    return spec, paradigm.memory_phases(spec, info["prompt_len"], info["gen_len"])


def predicted(info: dict, batch: int) -> int:
    return predicted_peak_bytes(*phases(info), batch, "bf16")


rows = []
print("boundary | measured max batch | predicted | allocated at max | reserved at max (GiB)")
for path in sorted(glob.glob("results/boundary-h100/*.json.xz")):
    document = read_run_document(path)
    for entry in [*document["benchmarks"], *document.get("dlmbench_failed", [])]:
        info = entry["extra_info"]
        if info.get("max_batch_size") is None:
            continue
        limit = info["memory_limit_gib"] * 2**30 if info["memory_limit_gib"] else H100_BYTES
        reserved = info.get("peak_mem_reserved_bytes") if info["status"] == "ok" else None
        print(f"{path.split('/')[-1]}:{info['paradigm']}-p{info['prompt_len']} | {info['max_batch_size']}"
              f"{'' if info['first_oom_batch'] else ' (no OOM up to --dlm-max-batch)'} | "
              f"{predicted_max_batch(*phases(info), 'bf16', int(limit))} | {info['peak_mem_at_max_bytes'] / 2**30:.2f} | "
              f"{reserved / 2**30 if reserved else float('nan'):.2f}")
        probes = zip(info["boundary_probe_batches"], info.get("boundary_probe_peak_bytes")
                     or [info["peak_mem_at_max_bytes"] if b == info["max_batch_size"] else None
                         for b in info["boundary_probe_batches"]])
        for batch, peak in probes:
            if peak:
                rows.append(("probe", f"{path.split('/')[-1]}:{info['paradigm']}-p{info['prompt_len']}-b{batch}",
                             peak / predicted(info, batch)))
for entry in read_run_document("results/standard-h100/standard-h100.json.xz")["benchmarks"]:
    info = entry["extra_info"]
    rows.append(("grid", entry["name"], info["peak_mem_allocated_bytes"] / predicted(info, info["batch_size"])))

for kind in ("probe", "grid"):
    ratios = [ratio for k, _, ratio in rows if k == kind]
    print(f"{kind}: {len(ratios)} points, measured/predicted min {min(ratios):.3f} "
          f"median {statistics.median(ratios):.3f} max {max(ratios):.3f}")
worst = sorted(rows, key=lambda row: abs(row[2] - 1))[-12:]
print("furthest from 1:", *(f"  {name}: {ratio:.3f}" for _, name, ratio in worst), sep="\n")
