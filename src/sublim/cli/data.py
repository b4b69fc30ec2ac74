"""`sublim data`: find, download and verify a dataset ahead of time (e.g. on a login node)."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import DATASETS, EMNIST_SPLITS
from ..errors import ConfigError


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `data` subcommand."""
    data_p = sub.add_parser(
        "data",
        help="find, download and verify a dataset",
        description="Locate a dataset under --data-dir (downloading what is missing from the "
        "official mirrors, with checksums) and print its sizes.",
    )
    data_p.add_argument("--dataset", default="mnist", help=f"{', '.join(DATASETS)}")
    data_p.add_argument("--emnist-split", default="balanced", help=f"{', '.join(EMNIST_SPLITS)}")
    data_p.add_argument("--data-dir", default="./MNIST", help="(default: %(default)s)")
    data_p.add_argument("--offline", action="store_true", help="never download")
    return data_p


def cmd_data(ns: argparse.Namespace) -> int:
    """Locate (downloading what is missing) and verify a dataset; print its sizes."""
    splits = EMNIST_SPLITS
    from ..data.datasets import load_dataset

    dataset = ns.dataset.strip().lower().replace("_", "-")
    if dataset not in DATASETS:
        raise ConfigError("--dataset", ns.dataset, f"allowed: {', '.join(DATASETS)}")
    split = ns.emnist_split.strip().lower()
    if dataset == "emnist" and split not in splits:
        raise ConfigError("--emnist-split", ns.emnist_split, f"allowed: {', '.join(splits)}")
    data = load_dataset(dataset, ns.data_dir, emnist_split=split, download=not ns.offline)
    print(
        f"{dataset}{'/' + split if dataset == 'emnist' else ''}: train {tuple(data.train_x.shape)}, "
        f"test {tuple(data.test_x.shape)}, {data.num_classes} classes"
        + ("" if dataset == "image-folder" else ", checksums verified")
    )
    return 0
