"""`sublim kd analyze`: layer knowledge quality (S, I, E, Q) and geometry of a trained KD model.

For every generalized layer of a completed experiment (or a best.pt), on its training split,
un-augmented and in eval mode, `sublim.geometry.layer_quality` gives one row of metrics on
class-balanced subsets (the KD_wo_CE spec's sizes unless overridden) drawn from a seed. The rows
go to `layer_quality.csv` in the experiment's directory with a sidecar `layer_quality.json`
holding the cache key (the model's identity: the experiment's config hash or the file's sha256,
and the analysis settings); a rerun with the same key reads the CSV instead of recomputing.
`layer_quality.png` draws S, I, E and Q. `compare` computes linear CKA between every student and
every teacher layer on a seeded subset (`--against`).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..store.csvio import atomic_write_bytes
from .config import KD_DATASETS, TRANSFORMERS, KDConfig
from .experiment import Experiment

CSV_NAME, KEY_NAME, PNG_NAME = "layer_quality.csv", "layer_quality.json", "layer_quality.png"
# bump when the metrics change, so cached analyses are recomputed (2: the reference's S, float64
# class spectra of centered features, corrected columns, TinyImageNet CNN set B)
VERSION = 2
LEAD = ("index", "name", "shape", "rel_depth", "model", "dataset")
FIRST_METRICS = (
    "s",
    "i",
    "e",
    "q",
    "sqrt_ie",
    "s_corrected",
    "i_corrected",
    "q_corrected",
    "sqrt_ie_corrected",
)
# TinyImageNet with a CNN: the reference extracts features of a class-stratified 10 % of the
# training set only (Trainer.GenPerLayerFeatures: GetRandomSubset(10000), 50 per class), so its
# B = min(500, 10000 // 200) = 50 per class; A = 25 per class as everywhere (5000 // 200).
TINY_CNN_POOL = 10_000
TEXT_COLUMNS = ("name", "shape", "model", "dataset")


@dataclass(frozen=True)
class Settings:
    """What an analysis depends on besides the model (all of it enters the cache key)."""

    seed: int = 0
    probe: bool = False
    per_class_a: int | None = None  # None: floor(5000 / C), the spec's |A|
    per_class_b: int | None = None  # None: min(500, floor(N / C)) (TinyImageNet CNNs: 50)
    limit: int | None = None  # training images used (None: the experiment's train_limit)


@dataclass(frozen=True)
class Target:
    """A trained model to analyse: its name, data, weights, identity and output folder."""

    model: str
    data: KDConfig  # dataset, data_dir and train_limit of the images analysed
    weights: Path
    identity: str  # "config:<hash>" of an experiment, "sha256:<digest>" of a lone file
    out_dir: Path


@dataclass
class Analysis:
    """One analysis: rows (one per layer, ascending), where they are, whether they were cached."""

    rows: list[dict[str, Any]]
    csv: Path
    png: Path
    cached: bool
    seconds: float


def _completed(folder: Path, path: Path) -> dict[str, Any]:
    """The experiment's config.json, refusing one that is not completed (one line)."""
    status = Experiment.read_status(folder / "status.json")
    if status.get("status") != "completed":
        raise ConfigError(
            "PATH",
            str(path),
            f"the experiment is {status.get('status')} (epoch {status.get('epoch')}/"
            f"{status.get('epochs')}); analyse it once it has completed",
        )
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("PATH", str(path), f"unreadable config.json ({exc})") from None


def find_target(
    path: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
) -> Target:
    """The model at `path`: a completed experiment directory, or a best.pt (its dataset from a
    config.json beside it, else `dataset`; its data directory `data_dir`, else the config's;
    `limit` training images, else the config's train_limit). ConfigError (one line) otherwise."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    weights = folder / "best.pt" if path.is_dir() else path
    if path.is_dir() and not (folder / "config.json").exists():
        raise ConfigError("PATH", str(path), "not a sublim kd experiment (no config.json)")
    in_experiment = path.exists() and (folder / "config.json").exists()
    config = _completed(folder, path) if in_experiment else {}
    if not weights.is_file():
        raise ConfigError("PATH", str(path), "no such experiment directory or checkpoint file")
    dataset = (config.get("dataset") or dataset or "").strip().lower()
    if not dataset:
        raise ConfigError("--dataset", None, f"{path} has no config.json beside it; name its data")
    if dataset not in KD_DATASETS:
        raise ConfigError("--dataset", dataset, f"allowed: {', '.join(KD_DATASETS)}")
    model = config.get("model")
    if in_experiment and weights.name == "best.pt":
        identity = f"config:{config.get('config_hash')}"
    else:
        identity = f"sha256:{_digest(weights)}"
        model = None
    if model is None:
        model = _checkpoint(weights).get("model")
    if limit is None:
        limit = int(config.get("train_limit", 0) or 0)
    data = KDConfig(
        role="teacher",
        model=str(model),
        dataset=dataset,
        data_dir=data_dir or config.get("data_dir") or "./data",
        train_limit=int(limit),
        device="cpu",
    )
    return Target(str(model), data, weights, identity, folder)


def default_per_class_b(model: str, dataset: str, num_classes: int) -> int | None:
    """The reference's |B| per class where it differs from min(500, N / C): 50 for TinyImageNet
    with a CNN (its feature pool is 10,000 images); None elsewhere (the general rule)."""
    if dataset == "tinyimagenet" and model not in TRANSFORMERS:
        return min(500, TINY_CNN_POOL // num_classes)
    return None


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _checkpoint(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file)
        raise ConfigError("PATH", str(path), f"unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "weights" not in data or "model" not in data:
        raise ConfigError("PATH", str(path), "expected a best.pt ({'weights': ..., 'model': ...})")
    return data


def cache_key(target: Target, settings: Settings) -> dict[str, Any]:
    """Everything the rows depend on: the model's identity, its data and the settings."""
    return {
        "version": VERSION,
        "identity": target.identity,
        "model": target.model,
        "dataset": target.data.dataset,
        "train_limit": target.data.train_limit,
        **asdict(settings),
        "limit": None,  # folded into train_limit above
    }


def cached(target: Target, settings: Settings) -> list[dict[str, Any]] | None:
    """The rows of an earlier analysis with the same key, or None (nothing is computed)."""
    try:
        sidecar = json.loads((target.out_dir / KEY_NAME).read_text())
        text = (target.out_dir / CSV_NAME).read_text()
    except (OSError, json.JSONDecodeError):
        return None
    if sidecar.get("key") != cache_key(target, settings):
        return None
    return read_rows(text)


def read_rows(text: str) -> list[dict[str, Any]]:
    """Rows of a layer_quality.csv, numbers as numbers."""
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {}
        for k, v in raw.items():
            if k in TEXT_COLUMNS:
                row[k] = v
            elif k in ("index", "layer", "dim", "n_a", "n_b", "seed"):
                row[k] = int(float(v))
            else:
                row[k] = float(v) if v not in ("", None) else math.nan
        rows.append(row)
    return rows


def load_model(target: Target, device: torch.device) -> torch.nn.Module:
    """The model with the target's weights, in eval mode on `device`."""
    from .models import create_model

    state = _checkpoint(target.weights)["weights"]
    shape = target.data.input_shape
    net = create_model(target.model, target.data.num_classes, image_size=shape[1])
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        why = str(exc).splitlines()[0]
        raise ConfigError("PATH", str(target.weights), f"not a {target.model} ({why})") from None
    return net.to(device).eval()


def features_fn(
    net: torch.nn.Module, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> Callable[[torch.Tensor, list[int]], dict[int, torch.Tensor]]:
    """uint8 images -> {layer: output}, normalised as in training, stopping at the deepest."""
    from ..engine.train import Normalizer

    norm = Normalizer(mean, std, device)

    def run(x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            return net.forward_layers(norm(x.to(device)), layers, stop_after=max(layers))[0]

    return run


def analyze(
    target: Target,
    settings: Settings = Settings(),
    *,
    device: str = "cpu",
    top_k: int = 4,
    draw: bool = True,
    warn: Callable[[str], None] | None = None,
) -> Analysis:
    """Every generalized layer's row (cached by `cache_key`), the CSV, sidecar and figure;
    `warn` hears of layers with undefined (NaN) quality (default: a Python warning)."""
    csv_path, png_path = target.out_dir / CSV_NAME, target.out_dir / PNG_NAME
    start = time.perf_counter()
    rows = cached(target, settings)
    if rows is not None:
        if draw and not png_path.exists():
            _draw(rows, target, png_path, top_k)
        return Analysis(rows, csv_path, png_path, True, time.perf_counter() - start)
    from ..engine.run import resolve_device
    from ..geometry import layer_quality
    from .data import load_kd_data

    dev = resolve_device(device)
    net = load_model(target, dev)
    data = load_kd_data(target.data)
    table = net.layer_table(target.data.input_shape)
    metrics = layer_quality(
        features_fn(net, data.mean, data.std, dev),
        data.train_x,
        data.train_y,
        target.data.num_classes,
        [g.index for g in table],
        seed=settings.seed,
        linear_probe=settings.probe,
        per_class_a=settings.per_class_a,
        per_class_b=settings.per_class_b
        if settings.per_class_b is not None
        else default_per_class_b(target.model, target.data.dataset, target.data.num_classes),
        warn=warn,
    )
    rows = []
    for g, m in zip(table, metrics, strict=True):
        lead = {
            "index": g.index,
            "name": g.name,
            "shape": "x".join(map(str, g.shape)),
            "rel_depth": g.index / max(len(table) - 1, 1),
            "model": target.model,
            "dataset": target.data.dataset,
        }
        rows.append({**lead, **m})
    seconds = time.perf_counter() - start
    atomic_write_bytes(csv_path, write_rows(rows).encode())
    if draw:
        _draw(rows, target, png_path, top_k)
    sidecar = {"key": cache_key(target, settings), "seconds": round(seconds, 2)}
    atomic_write_bytes(target.out_dir / KEY_NAME, (json.dumps(sidecar, indent=1) + "\n").encode())
    return Analysis(rows, csv_path, png_path, False, seconds)


def top_by(rows: list[dict[str, Any]], metric: str, k: int) -> list[int]:
    """The k best layers by `metric` (geometry.METRICS), ascending (geometry.select_layers)."""
    from ..geometry import select_layers

    defined = sum(1 for r in rows if not math.isnan(float(r[metric])))
    return select_layers(rows, metric, min(k, defined)) if defined else []


def write_rows(rows: list[dict[str, Any]]) -> str:
    """CSV text: the lead columns, the S/I/E/Q family, then every other metric in row order."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    first = [k for k in (*LEAD, *FIRST_METRICS) if k in keys]
    columns = first + [k for k in keys if k not in first]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _draw(rows: list[dict[str, Any]], target: Target, path: Path, top_k: int) -> None:
    import pandas as pd

    from ..analysis.quality import quality_figure
    from ..analysis.style import close, save

    title = f"{target.model} on {target.data.dataset}"
    fig = quality_figure(pd.DataFrame(rows), title, top_k)
    try:
        save(fig, path.with_suffix(""), ("png",))
    finally:
        close(fig)
