"""Datasets: registry, IDX reader, downloads and in-memory uint8 tensors."""

from sublim.data.datasets import ImageData, first_classes, load_dataset, select_classes
from sublim.data.download import DownloadError, download_file
from sublim.data.idx import read_idx, write_idx
from sublim.data.registry import (
    DatasetInfo,
    FileSpec,
    base_num_classes,
    dataset_names,
    emnist_splits,
    get_info,
)

__all__ = [
    "DatasetInfo",
    "DownloadError",
    "FileSpec",
    "ImageData",
    "base_num_classes",
    "dataset_names",
    "download_file",
    "emnist_splits",
    "first_classes",
    "get_info",
    "load_dataset",
    "read_idx",
    "select_classes",
    "write_idx",
]
