"""ExperimentConfig: one run, frozen and validated; its canonical hash.

Field names match the reference runner's flags (`--noise-steps` <-> `noise_steps`). Anything
derivable (layer names, resolved layer configs, seeds, hashes) is derived here, never stored.
Validation errors name the flag, the value and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any

from ..errors import ConfigError
from . import archspec
from .augmentspec import canonical as canonical_augment
from .augmentspec import parse_augment
from .layerconf import resolve_init, resolve_trainable
from .perturbspec import PerturbSpec

DATASETS = ("mnist", "fashion-mnist", "kmnist", "emnist", "cifar10", "image-folder")
EMNIST_SPLITS = {
    "balanced": 47,
    "letters": 26,
    "byclass": 62,
    "bymerge": 47,
    "digits": 10,
    "mnist": 10,
}
BASE_CLASSES = {"mnist": 10, "fashion-mnist": 10, "kmnist": 10, "cifar10": 10}
# (channels, height, width) of each dataset's images (image-folder: 3 x --image-size squared)
INPUT_SHAPES = {"cifar10": (3, 32, 32)}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # data.folders reads these
MODEL_TYPES = ("mlp", "cnn")
NOISE_DISTS = ("uniform", "normal", "perlin")
DISTILL_LOSSES = ("mse", "kl", "standardized-mse")
HEAD_LAYOUTS = ("split", "single")
INIT_SCHEMES = ("torch-default", "normal-fan-in")
CLASS_SELECTIONS = ("first",)
INPUT_SHAPE = (1, 28, 28)  # the MNIST family

# Fields that never change results: where to read and write, labels, and the device.
NON_RESULT_FIELDS = frozenset(
    {
        "outdir",
        "data_dir",
        "device",
        "num_workers",
        "sweep_name",
        "run_label",
        "condition",
        "append_global",
        "save_models",
        "diagnostics",
    }
)


NEW_FIELD_DEFAULTS: dict[str, Any] = {
    "head_layout": "split",
    "init_scheme": "torch-default",
    "noise_pool": 0,
    "data_mean": None,
    "data_std": None,
    "teacher_checkpoint": None,
    "augment": "",
    "similarity_samples": 1000,
}


def flag(name: str) -> str:
    """The CLI flag of a config field."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class ExperimentConfig:
    """Every setting of one teacher -> student run. Defaults are the reference runner's."""

    # run and output
    seed: int = 42
    device: str = "auto"
    outdir: str = "./outputs"
    data_dir: str = "./MNIST"
    num_workers: int = 0
    sweep_name: str = "default"
    run_label: str = ""
    condition: str = ""  # the sweep's named condition, written as an extra runs.csv column
    append_global: bool = False
    save_models: bool = False  # write initial/trained teacher and trained student checkpoints
    # record per-epoch curves, sample predictions and aux outputs on noise for `sublim report`
    diagnostics: bool = False
    # data
    dataset: str = "mnist"
    emnist_split: str = "balanced"
    class_count: int | None = None
    class_selection: str = "first"
    classes: tuple[int, ...] | None = None
    image_size: int = 64  # image-folder: images are resized to image_size x image_size RGB
    test_fraction: float = 0.2  # image-folder: share of images in the (deterministic) test split
    # models
    teacher_type: str = "mlp"
    student_type: str = "mlp"
    teacher_hidden_dims: tuple[int, ...] = (256, 256)
    student_hidden_dims: tuple[int, ...] = (256, 256)
    teacher_arch_spec: str | None = None  # JSON text of a CNN layer list
    student_arch_spec: str | None = None
    m: int = 10
    # split: class_head and aux_head; single: one `head` of num_classes + m outputs whose last m
    # ("ghost") logits are distilled
    head_layout: str = "split"
    # torch-default: PyTorch's Linear/Conv init; normal-fan-in: weights N(0, 1/sqrt(fan_in)),
    # zero bias
    init_scheme: str = "torch-default"
    teacher_init: str = "all:A"
    student_init: str = "all:A"
    teacher_trainable: str = "all:true"
    student_trainable: str = "all:true"
    # training
    teacher_epochs: int = 5
    student_epochs: int = 5
    data_bsize: int = 1024
    noise_bsize: int = 1000
    noise_steps: int = 60
    teacher_lr: float = 1e-3
    student_lr: float = 1e-3
    # affine augmentation of the teacher's training batches, e.g. "rotate=60,crop=2"
    augment: str = ""
    distill_loss: str = "mse"
    temperature: float = 1.0
    # noise
    noise_dist: str = "uniform"
    perlin_res: int = 4
    normalize_noise: bool = False
    eval_noise_batches: int = 10
    eval_noise_bsize: int = 1000
    # teacher-student linear CKA and RSA of every hidden layer on this many test images, a fixed
    # subset drawn from the seed (layer_metrics.csv columns linear_cka, rsa); 0: off
    similarity_samples: int = 1000
    # 0: fresh noise every step; N: a fixed pool of N noise images, reshuffled every student
    # epoch (one epoch = one pass over the pool in batches of noise_bsize)
    noise_pool: int = 0
    # input normalisation (per channel); None: the dataset's own constants
    data_mean: tuple[float, ...] | None = None
    data_std: tuple[float, ...] | None = None
    # start the student stage from this trained teacher (a teacher.pt of --save-models)
    teacher_checkpoint: str | None = None
    # perturbations
    perturb: tuple[PerturbSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self._validate()

    # ---------------------------------------------------------------- validation
    def _validate(self) -> None:
        for name in ("seed", "num_workers"):
            _int(name, getattr(self, name), minimum=0)
        for name in (
            "m",
            "teacher_epochs",
            "student_epochs",
            "data_bsize",
            "noise_bsize",
            "noise_steps",
            "perlin_res",
            "eval_noise_batches",
            "eval_noise_bsize",
        ):
            _int(name, getattr(self, name), minimum=1)
        for name in ("teacher_lr", "student_lr", "temperature"):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, int | float)
                or not math.isfinite(v)
                or v <= 0
            ):
                raise ConfigError(flag(name), v, "expected a finite number > 0")
        _choice("dataset", self.dataset, DATASETS)
        _int("image_size", self.image_size, minimum=8)
        tf = self.test_fraction
        if isinstance(tf, bool) or not isinstance(tf, int | float) or not 0 < tf < 1:
            raise ConfigError("--test-fraction", tf, "expected a number between 0 and 1")
        if self.dataset == "emnist":
            _choice("emnist_split", self.emnist_split, tuple(EMNIST_SPLITS))
        _choice("class_selection", self.class_selection, CLASS_SELECTIONS)
        for name in ("teacher_type", "student_type"):
            _choice(name, getattr(self, name), MODEL_TYPES)
        _choice("noise_dist", self.noise_dist, NOISE_DISTS)
        _choice("distill_loss", self.distill_loss, DISTILL_LOSSES)
        _choice("head_layout", self.head_layout, HEAD_LAYOUTS)
        _choice("init_scheme", self.init_scheme, INIT_SCHEMES)
        _int("noise_pool", self.noise_pool, minimum=0)
        _int("similarity_samples", self.similarity_samples, minimum=0)
        if 0 < self.similarity_samples < 3:
            raise ConfigError(
                "--similarity-samples", self.similarity_samples, "expected 0 (off) or >= 3"
            )
        self._validate_norm()
        parse_augment(self.augment)
        if self.teacher_checkpoint is not None:
            if not isinstance(self.teacher_checkpoint, str) or not self.teacher_checkpoint:
                raise ConfigError(
                    "--teacher-checkpoint", self.teacher_checkpoint, "expected a path"
                )
            early = [
                p
                for p in self.perturb
                if p.target == "teacher"
                and p.timing in ("before_teacher_training", "after_teacher_training")
            ]
            if early:
                raise ConfigError(
                    "--perturb",
                    early[0].timing,
                    "a teacher from --teacher-checkpoint is already trained; perturb it at "
                    "before_student_training or after_student_training",
                )
        if not _device_ok(self.device):
            raise ConfigError("--device", self.device, "expected auto, cpu, cuda, cuda:N or mps")
        for name in ("teacher_hidden_dims", "student_hidden_dims"):
            dims = getattr(self, name)
            if (
                not isinstance(dims, tuple)
                or not dims
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
            ):
                raise ConfigError(flag(name), dims, "expected comma-separated integers >= 1")
        base = self.base_num_classes
        if self.class_count is not None and self.classes is not None:
            raise ConfigError(
                "--classes", self.classes, "give --classes or --class-count, not both"
            )
        if self.class_count is not None:
            _int("class_count", self.class_count, minimum=2)
            if self.class_count > base:
                raise ConfigError(
                    "--class-count",
                    self.class_count,
                    f"expected 2..{base} for {self.dataset_label}",
                )
        if self.classes is not None:
            c = self.classes
            if (
                not isinstance(c, tuple)
                or len(c) < 2
                or len(set(c)) != len(c)
                or any(
                    isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < base for x in c
                )
            ):
                raise ConfigError(
                    "--classes",
                    c,
                    f"expected at least 2 distinct labels in 0..{base - 1} for {self.dataset_label}",
                )
        # derived structure: builds and validates specs, layer names and layer configs
        for role in ("teacher", "student"):
            self.feature_shapes(role)
        self.resolved_layer_configs  # noqa: B018 (validates)
        for i, spec in enumerate(self.perturb):
            if not isinstance(spec, PerturbSpec):
                raise ConfigError("--perturb", spec, "expected a PerturbSpec")
            names = self.layer_names(spec.target)
            bad = [n for n in spec.layers if n != "all" and n not in names]
            if bad:
                raise ConfigError(
                    f"--perturb[{i}] layers",
                    bad[0],
                    f"unknown {spec.target} layer; available: all, {', '.join(names)}",
                )

    def _validate_norm(self) -> None:
        given = [n for n in ("data_mean", "data_std") if getattr(self, n) is not None]
        if len(given) == 1:
            other = "data_std" if given[0] == "data_mean" else "data_mean"
            raise ConfigError(flag(other), None, f"give it together with {flag(given[0])}")
        if not given:
            return
        channels = self.input_shape[0]
        for name in ("data_mean", "data_std"):
            v = getattr(self, name)
            ok = isinstance(v, tuple) and len(v) in (1, channels)
            ok = ok and all(
                not isinstance(x, bool) and isinstance(x, int | float) and math.isfinite(x)
                for x in v
            )
            if not ok:
                raise ConfigError(
                    flag(name), v, f"expected 1 or {channels} comma-separated finite numbers"
                )
        if any(x <= 0 for x in self.data_std):  # type: ignore[union-attr]
            raise ConfigError("--data-std", self.data_std, "expected numbers > 0")

    # ---------------------------------------------------------------- derived facts
    @property
    def base_num_classes(self) -> int:
        """Classes of the dataset before any class selection."""
        if self.dataset == "emnist":
            return EMNIST_SPLITS[self.emnist_split]
        if self.dataset == "image-folder":
            return len(self.folder_classes)
        return BASE_CLASSES[self.dataset]

    @cached_property
    def folder_classes(self) -> list[str]:
        """Class directory names of an image folder (`--data-dir root/<class>/...`), sorted."""
        try:
            names = sorted(
                e.name for e in os.scandir(self.data_dir) if e.is_dir() and e.name[:1] != "."
            )
        except OSError as exc:
            raise ConfigError(
                "--data-dir", self.data_dir, f"cannot list it ({exc.strerror or exc})"
            ) from None
        if len(names) < 2:
            raise ConfigError(
                "--data-dir",
                self.data_dir,
                f"--dataset image-folder needs at least 2 class directories (root/<class>/*.jpg); "
                f"found {len(names)}",
            )
        return names

    @cached_property
    def folder_fingerprint(self) -> str:
        """Hash of an image folder's image files (relative paths and sizes), so a changed or
        relabelled folder is a different experiment even under the same class names."""
        h = hashlib.blake2b(digest_size=8)
        for name in self.folder_classes:
            for dirpath, dirnames, filenames in os.walk(os.path.join(self.data_dir, name)):
                dirnames[:] = sorted(d for d in dirnames if d[:1] != ".")
                for f in sorted(filenames):
                    if f[:1] != "." and os.path.splitext(f)[1].lower() in IMAGE_SUFFIXES:
                        path = os.path.join(dirpath, f)
                        rel = os.path.relpath(path, self.data_dir).replace(os.sep, "/")
                        h.update(f"{rel}\0{os.path.getsize(path)}\n".encode())
        return h.hexdigest()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the dataset's images, as the models see them."""
        if self.dataset == "image-folder":
            return (3, self.image_size, self.image_size)
        return INPUT_SHAPES.get(self.dataset, INPUT_SHAPE)

    @property
    def dataset_label(self) -> str:
        return f"emnist/{self.emnist_split}" if self.dataset == "emnist" else self.dataset

    @property
    def selected_classes(self) -> tuple[int, ...] | None:
        """Original labels kept, in the order they are remapped to 0..K-1 (None: all)."""
        if self.classes is not None:
            return self.classes
        if self.class_count is not None:
            return tuple(range(self.class_count))
        return None

    @property
    def num_classes(self) -> int:
        sel = self.selected_classes
        return len(sel) if sel is not None else self.base_num_classes

    def arch_spec(self, role: str) -> list[dict[str, Any]] | None:
        """The normalised CNN layer list of `role` (None for an MLP)."""
        return self._specs[role]

    @cached_property
    def _specs(self) -> dict[str, list[dict[str, Any]] | None]:
        out: dict[str, list[dict[str, Any]] | None] = {}
        for role in ("teacher", "student"):
            text = getattr(self, f"{role}_arch_spec")
            key = f"--{role}-arch-spec"
            if getattr(self, f"{role}_type") != "cnn":
                if text is not None:  # ignored for an MLP (as in the reference), but must parse
                    archspec.parse_json_spec(text, key)
                out[role] = None
                continue
            if text is None:
                out[role] = archspec.default_cnn_spec(getattr(self, f"{role}_hidden_dims"))
            else:
                out[role] = archspec.normalize_cnn_spec(archspec.parse_json_spec(text, key), key)
        return out

    def hidden_dims(self, role: str) -> tuple[int, ...]:
        return getattr(self, f"{role}_hidden_dims")

    def feature_shapes(self, role: str) -> list[tuple[int, ...]]:
        """Output shape of each feature layer of `role` (a CNN's validated against the input)."""
        spec = self.arch_spec(role)
        if spec is None:
            return [(d,) for d in self.hidden_dims(role)]
        return archspec.cnn_shapes(spec, self.input_shape, f"--{role}-arch-spec")

    def layer_names(self, role: str) -> list[str]:
        """Layer names of `role` in order, heads last."""
        return archspec.layer_names(
            getattr(self, f"{role}_type"),
            self.hidden_dims(role),
            self.arch_spec(role),
            self.head_layout,
        )

    @cached_property
    def resolved_layer_configs(self) -> dict[str, dict[str, Any]]:
        """{teacher_init, student_init, teacher_trainable, student_trainable}: {layer: value}."""
        out: dict[str, dict[str, Any]] = {}
        for role in ("teacher", "student"):
            names = self.layer_names(role)
            out[f"{role}_init"] = resolve_init(
                getattr(self, f"{role}_init"), names, f"--{role}-init"
            )
            out[f"{role}_trainable"] = resolve_trainable(
                getattr(self, f"{role}_trainable"), names, f"--{role}-trainable"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every field, JSON-ready (perturbations as dicts, tuples as lists)."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["perturb"] = [p.to_dict() for p in self.perturb]
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def result_dict(self) -> dict[str, Any]:
        """The fields that change results, with layer configs and specs in resolved form."""
        d = {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_FIELDS}
        d.update(self.resolved_layer_configs)
        for role in ("teacher", "student"):
            d[f"{role}_arch_spec"] = self.arch_spec(role)
        if self.dataset != "emnist":
            d.pop("emnist_split")
        d["classes"] = list(self.selected_classes) if self.selected_classes else None
        d.pop("class_count")
        d.pop("class_selection")
        if self.distill_loss != "kl":
            d.pop("temperature")
        if self.noise_dist != "perlin":
            d.pop("perlin_res")
        d["augment"] = canonical_augment(self.augment)
        # fields added after the first release leave the hash unchanged at their defaults, so
        # existing output directories still resume
        for name, default in NEW_FIELD_DEFAULTS.items():
            if d.get(name) == default:
                d.pop(name)
        if self.noise_pool:
            d.pop("noise_steps")  # an epoch is one pass over the pool
        if self.dataset != "image-folder":
            d.pop("image_size")
            d.pop("test_fraction")
        else:
            d["folder_classes"] = self.folder_classes
            d["folder_fingerprint"] = self.folder_fingerprint
        return d

    @cached_property
    def config_hash(self) -> str:
        """Canonical hash of the fields that change results (16 hex digits).

        Equivalent spellings (`A,A,A,A` vs `all:A`, `--class-count 3` vs `--classes 0,1,2`)
        hash the same; output paths, labels and the device do not enter it.
        """
        text = json.dumps(self.result_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def replace(self, **changes: Any) -> ExperimentConfig:
        """A validated copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        """Build from plain values (lists for tuples, dicts for perturbations)."""
        from .perturbspec import from_mapping

        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], data[unknown[0]], "unknown config field")
        d = dict(data)
        for k in ("teacher_hidden_dims", "student_hidden_dims", "classes", "data_mean", "data_std"):
            if isinstance(d.get(k), list):
                d[k] = tuple(d[k])
        if "perturb" in d:
            d["perturb"] = tuple(
                p if isinstance(p, PerturbSpec) else from_mapping(p, "perturb")
                for p in d["perturb"]
            )
        return cls(**d)


def _int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(flag(name), value, f"expected an integer >= {minimum}")


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(flag(name), value, f"allowed: {', '.join(allowed)}")


def _device_ok(device: str) -> bool:
    if device in ("auto", "cpu", "cuda", "mps"):
        return True
    head, _, idx = str(device).partition(":")
    return head == "cuda" and idx.isdigit()


__all__ = ["ExperimentConfig", "flag"]
