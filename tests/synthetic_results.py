"""Small synthetic result directories for analysis tests, written by the real RunStore.

Each run's accuracy is a known function of its axes plus seeded noise, so tests can check what
the summaries and figures should show without training anything.
"""

from __future__ import annotations

import json
import math
import random
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sublim.records import RunRecord
from sublim.store import RunStore

LAYERS = ("fc1", "fc2", "class_head", "aux_head")


def _dims(value: Any) -> str:
    return json.dumps(list(value), separators=(",", ":"))


def base_row(seed: int, sweep: str, **axes: Any) -> dict[str, Any]:
    """A runs.csv row with the reference defaults, overridden by `axes`."""
    hidden = axes.pop("hidden", (256, 256))
    student_hidden = axes.pop("student_hidden", hidden)
    init = axes.pop("student_init", {n: "A" for n in LAYERS})
    trainable = axes.pop("student_trainable", {n: True for n in LAYERS})
    row: dict[str, Any] = {
        "schema_version": 1,
        "timestamp": "2026-11-25T00:00:00+00:00",
        "runtime_seconds": 1.0,
        "sweep_name": sweep,
        "seed": seed,
        "teacher_model_seed": 6957570443382739013 + seed,
        "torch_version": "2.13.0+cpu",
        "cuda_available": False,
        "device": "cpu",
        "dataset": "mnist",
        "num_classes": 10,
        "teacher_type": "mlp",
        "student_type": "mlp",
        "teacher_hidden_dims": _dims(hidden),
        "student_hidden_dims": _dims(student_hidden),
        "student_layer_names": json.dumps(
            [f"fc{i + 1}" for i in range(len(student_hidden))] + ["class_head", "aux_head"]
        ),
        "m": 10,
        "teacher_epochs": 5,
        "student_epochs": 5,
        "noise_steps": 60,
        "student_init_config": json.dumps(init, separators=(",", ":")),
        "student_trainable_config": json.dumps(trainable, separators=(",", ":")),
        "perturb_specs": "[]",
        "condition": "",
    }
    row.update(axes)
    return row


def write_sweep(
    outdir: Path,
    sweep: str,
    points: Iterable[dict[str, Any]],
    seeds: Iterable[int],
    accuracy: Callable[[dict[str, Any], random.Random], float],
    *,
    append_global: bool = True,
    layers: bool = True,
) -> int:
    """Write one run per point x seed; returns the number of runs written."""
    records = []
    for point in points:
        for seed in seeds:
            key = f"{sweep}|{json.dumps(point, sort_keys=True, default=str)}|{seed}"
            rng = random.Random(zlib.crc32(key.encode()))
            row = base_row(seed, sweep, **dict(point))
            row["run_id"] = f"{sweep}-{len(records):05d}"
            row["run_label"] = json.dumps(point, sort_keys=True, default=str)
            row["student_final_acc"] = accuracy(row, rng)
            row["student_init_acc"] = 0.1 + rng.gauss(0, 0.01)
            row["teacher_final_acc"] = row.get("teacher_final_acc", 0.97 + rng.gauss(0, 0.002))
            row["student_final_aux_loss"] = math.exp(rng.gauss(-6, 0.3))
            layer_rows = _layer_rows(row, rng) if layers else []
            config = {"effective_config": {"sweep_name": sweep, "seed": seed, **point}}
            config["run_id"] = row["run_id"]
            records.append(RunRecord(seed, row, layer_rows, [], config))
    with RunStore(outdir, append_global=append_global) as store:
        store.write_many(records)
    return len(records)


def _layer_rows(row: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    out = []
    init = json.loads(row["student_init_config"])
    for comparison in ("teacher_student_init", "teacher_student_final"):
        for layer in json.loads(row["student_layer_names"]):
            for kind in ("weight", "bias"):
                shared = init.get(layer, "A") == "A"
                base = 1.0 if shared else 0.0
                if comparison.endswith("final"):
                    base = 0.9 if shared else 0.3
                out.append(
                    {
                        "run_id": row["run_id"],
                        "seed": row["seed"],
                        "sweep_name": row["sweep_name"],
                        "run_label": row["run_label"],
                        "comparison": comparison,
                        "layer_name": layer,
                        "tensor_kind": kind,
                        "status": "comparable",
                        "cosine": base + rng.gauss(0, 0.01),
                    }
                )
    return out


# -- the paper's sweeps, small ---------------------------------------------------------------


def fig2(outdir: Path, seeds: Iterable[int] = range(4)) -> int:
    """Figure 2: m x six init conditions."""
    conditions = {
        "same_init": {},
        "rand_first_hid": {"fc1": "random"},
        "rand_aux_head": {"aux_head": "random"},
    }
    points = [
        {
            "m": m,
            "condition": name,
            "student_init": {**{n: "A" for n in LAYERS}, **changes},
        }
        for name, changes in conditions.items()
        for m in (3, 10, 50, 250)
    ]

    def acc(row: dict[str, Any], rng: random.Random) -> float:
        if row["condition"] == "rand_aux_head":
            return 0.1 + rng.gauss(0, 0.01)
        scale = 1.0 if row["condition"] == "same_init" else 0.5
        return min(0.97, 0.2 + scale * 0.15 * math.log(row["m"])) + rng.gauss(0, 0.02)

    return write_sweep(outdir, "fig2_init_conditions", points, seeds, acc)


def fig3(outdir: Path, seeds: Iterable[int] = range(3)) -> int:
    """Figure 3: the four panels as four sweeps."""
    n = 0
    n += write_sweep(
        outdir,
        "fig3_emnist_class_count",
        [{"num_classes": k, "dataset": "emnist", "m": 50} for k in (2, 5, 10, 20, 47)],
        seeds,
        lambda r, g: 0.3 + 1 / r["num_classes"] + g.gauss(0, 0.02),
    )
    n += write_sweep(
        outdir,
        "fig3_student_first_width",
        [{"student_hidden": (d, 256), "m": m} for d in (8, 32, 128, 512, 2048) for m in (10, 50)],
        seeds,
        lambda r, g: (
            0.2 + (0.3 if r["student_hidden_dims"] == "[256,256]" else 0) + g.gauss(0, 0.02)
        ),
    )
    n += write_sweep(
        outdir,
        "fig3_student_depth",
        [{"student_hidden": h, "m": m} for h in ((256,), (256, 256, 256)) for m in (10, 50)],
        seeds,
        lambda r, g: 0.15 + g.gauss(0, 0.02),
    )
    n += write_sweep(
        outdir,
        "fig3_mlp_teacher_cnn_student",
        [{"student_type": "cnn", "m": m, "hidden": (256, 256, 256)} for m in (10, 50)],
        seeds,
        lambda r, g: 0.12 + g.gauss(0, 0.01),
        layers=False,
    )
    return n


def fig4(outdir: Path, seeds: Iterable[int] = range(3)) -> int:
    """Figure 4: the m x N grid and the m = 1 and N = 1 sweeps."""
    values = (1, 4, 16, 64, 256)

    def acc(row: dict[str, Any], rng: random.Random) -> float:
        return min(0.96, 0.1 + 0.05 * math.log2(row["m"] * row["noise_steps"])) + rng.gauss(0, 0.01)

    n = write_sweep(
        outdir,
        "fig4_m_by_noise_steps",
        [{"m": m, "noise_steps": s} for m in values for s in values],
        seeds,
        acc,
    )
    n += write_sweep(
        outdir, "fig4_m1_noise_sweep", [{"m": 1, "noise_steps": s} for s in values], seeds, acc
    )
    n += write_sweep(
        outdir, "fig4_noise1_m_sweep", [{"m": m, "noise_steps": 1} for m in values], seeds, acc
    )
    return n


def fig5(outdir: Path, seeds: Iterable[int] = range(3)) -> int:
    """Figure 5: perturbation std x perturbed head."""
    points = []
    for head in ("aux_head", "class_head"):
        for std in (0.0, 0.05, 0.1, 0.15, 0.2):
            spec = [
                {
                    "target": "student",
                    "layers": [head],
                    "std": std,
                    "timing": "before_student_training",
                }
            ]
            points.append({"condition": head, "perturb_specs": json.dumps(spec)})

    def acc(row: dict[str, Any], rng: random.Random) -> float:
        std = json.loads(row["perturb_specs"])[0]["std"]
        return 0.9 - 3 * std + rng.gauss(0, 0.02)

    return write_sweep(outdir, "fig5_perturb_heads", points, seeds, acc)


def fig6(outdir: Path, seeds: Iterable[int] = range(3)) -> int:
    """Figure 6: hidden width D x variants (one on EMNIST)."""
    points = []
    for variant in ("mnist_m10", "emnist_m50", "aux_heads_frozen"):
        for d in (1, 4, 16, 64, 256, 1024):
            p: dict[str, Any] = {"condition": variant, "hidden": (256, d)}
            if variant == "emnist_m50":
                p.update(dataset="emnist", num_classes=47, m=50, teacher_final_acc=0.85)
            points.append(p)

    def acc(row: dict[str, Any], rng: random.Random) -> float:
        d = json.loads(row["student_hidden_dims"])[-1]
        return min(0.95, 0.1 + 0.12 * math.log2(d + 1)) + rng.gauss(0, 0.02)

    return write_sweep(outdir, "fig6_hidden_width", points, seeds, acc)
