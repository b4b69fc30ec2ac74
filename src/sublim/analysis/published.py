"""The KD benchmark's published top-1 accuracies, in sublim's model and method names.

`data/kd_published.csv` holds every number of the fact sheet (the RepDistiller README's two
CRD tables, mdistiller's DKD and DOT tables, ReviewKD's, and secondary sources), one row per
(source table, pair, method). For a reproduced experiment one number is the reference: the
first source in `PRECEDENCE` that reports its method, because that suite's recipe is the one
sublim's spec for the method follows. Each source's epoch convention is kept beside it:
RepDistiller reports the last epoch, mdistiller, ReviewKD and their lineage the best.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import pandas as pd

# published model names -> sublim's (CIFAR's ResNet50 is RepDistiller's CIFAR variant)
MODEL_NAMES = {
    "MobileNetV2": "mobilenetv2",
    "ShuffleV1": "shufflev1",
    "ShuffleV2": "shufflev2",
    "ResNet50": "resnet50",
}
# and on ImageNet, mdistiller's torchvision-layout models
IMAGENET_MODELS = {
    "ResNet18": "resnet18_imagenet",
    "ResNet34": "resnet34_imagenet",
    "ResNet50": "resnet50_imagenet",
    "MobileNetV1": "mobilenetv1",
}
# published method names -> sublim's method (or the condition name the benchmark specs use);
# "teacher" and "student" are the two models trained alone
METHOD_NAMES = {
    "KD": "kd",
    "FitNet": "fitnets",
    "AT": "at",
    "SP": "sp",
    "CC": "cc",
    "VID": "vid",
    "RKD": "rkd",
    "PKT": "pkt",
    "AB": "ab",
    "FT": "ft",
    "FSP": "fsp",
    "NST": "nst",
    "CRD": "crd",
    "CRD+KD": "crd_kd",
    "OFD": "ofd",
    "ReviewKD": "reviewkd",
    "DKD": "dkd",
    "KD+DOT": "kd_dot",
    "KD+LS": "logit_std",
    "DKD+LS": "dkd_ls",
    "SimKD(f=2)": "simkd",
    "teacher": "teacher",
    "student": "student",
}
DATASETS = {"tiny_imagenet": "tinyimagenet"}
# Which table speaks for a method, first match wins: the suite whose recipe and code the
# published number comes from. (table-name prefix, epoch it reports)
PRECEDENCE: tuple[tuple[str, str], ...] = (
    ("RD-", "last"),  # the RepDistiller README: the CRD paper's benchmark
    ("CRD paper", "last"),  # CRD+KD, the CRD paper's tables (RepDistiller's code)
    ("MD ", "best"),  # mdistiller: DKD, DOT, its KD re-runs
    ("ReviewKD", "best"),  # the official ReviewKD code (ImageNet)
    ("ND ", "best"),  # the DKD/ReviewKD paper lineage: OFD, ReviewKD on CIFAR
    ("LS ", "best"),  # logit standardisation (mdistiller-based)
    ("SimKD", "best"),  # the SimKD toolbox (its own teachers)
)
COLUMNS = ("dataset", "teacher", "student", "method", "top1", "epoch", "table", "source")


@cache
def published() -> pd.DataFrame:
    """One reference number per (dataset, teacher, student, method) in sublim's names, with
    the epoch it reports ("last" or "best"), its table and its source."""
    raw = pd.read_csv(resources.files(__package__).joinpath("data/kd_published.csv"))
    rows = []
    for rank, (prefix, epoch) in enumerate(PRECEDENCE):
        part = raw[raw["table"].str.startswith(prefix)]
        for rec in part.itertuples(index=False):
            method = METHOD_NAMES.get(str(rec.method))
            if method is None:
                continue
            names = IMAGENET_MODELS if rec.dataset == "imagenet" else MODEL_NAMES
            rows.append(
                {
                    "dataset": DATASETS.get(str(rec.dataset), str(rec.dataset)),
                    "teacher": names.get(str(rec.teacher), str(rec.teacher)),
                    "student": names.get(str(rec.student), str(rec.student)),
                    "method": method,
                    "top1": float(rec.top1),
                    "epoch": epoch,
                    "table": str(rec.table),
                    "source": str(rec.source),
                    "rank": rank,
                }
            )
    frame = pd.DataFrame(rows).sort_values("rank", kind="stable")
    frame = frame.drop_duplicates(["dataset", "teacher", "student", "method"], keep="first")
    return frame[list(COLUMNS)].reset_index(drop=True)


def lookup(dataset: str, teacher: str, student: str, method: str) -> dict[str, object] | None:
    """The reference number of one cell of the benchmark, or None when no table has it."""
    frame = published()
    hit = frame[
        (frame["dataset"] == dataset)
        & (frame["teacher"] == teacher)
        & (frame["student"] == student)
        & (frame["method"] == method)
    ]
    return None if hit.empty else hit.iloc[0].to_dict()
