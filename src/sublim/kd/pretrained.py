"""ImageNet-pretrained teachers (KD_wo_CE): torchvision weights adapted to 32 / 64 px models.

`load_pretrained(model, name, path_or_auto, image_size)` reads a torchvision-layout `.pth` state
dict (`torch.load(weights_only=True)`; "auto" downloads PyTorch's published file into a cache
and checks the sha256 prefix its name carries) into a `resnet34`, `vgg19_bn`, `vit_b` or an
ImageNet ResNet and adapts it as the spec (section 5) says:

- resnet34: the 7x7/2 stem conv is not loaded (the model's own 3x3/1 conv keeps its He init;
  its BN is loaded); `fc.` is our `classifier.`, re-initialised N(0, 0.01), zero bias.
- vgg19_bn: classifier.0 (25088 inputs there, 512 here) and classifier.6 re-initialised
  N(0, 0.01), zero bias; everything else loaded key for key.
- vit_b: the 16x16 patch kernel average-pooled to the model's patch size (4 at 32 px, 8 at
  64 px); the 14x14 position grid resized to 8x8 bilinearly (corners aligned, as the reference's
  linear `scipy.ndimage.zoom`), the class position kept FIRST. `pos_layout="reference"`
  reproduces KD_wo_CE's off-by-one (spec 9.9): its "class" position is torchvision's last grid
  cell and its grid the first 196 positions, the real class position included. The head stays
  zero (the model's init). Files from before torchvision renamed `mlp.linear_1/2` load too.
- resnet18/34/50_imagenet (mdistiller's ImageNet teachers, built for 1000 classes): every key
  loaded as it is (`fc.` is our `classifier.`); "auto" fetches the files mdistiller loads.

A file that is not a state dict, lacks a key, has an unexpected one or a wrong shape is one
ConfigError line naming `--pretrained`, the key and both shapes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.download import DownloadError, download_file, file_digest
from ..errors import ConfigError, DataError
from .config import POS_LAYOUTS, PRETRAINED_FILES
from .models import TapNet

FLAG = "--pretrained"
# torchvision's IMAGENET1K_V1 files; the hex after "-" is their sha256 prefix
URLS = {name: f"https://download.pytorch.org/models/{f}" for name, f in PRETRAINED_FILES.items()}
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,})\.")
# mdistiller's ImageNet ResNets: torchvision's network, loaded key for key (`fc.` renamed)
IMAGENET_MODELS = ("resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet")


def default_cache_dir() -> Path:
    """Where "auto" puts downloaded weights unless told otherwise."""
    return Path.home() / ".cache" / "sublim" / "pretrained"


def pretrained_cache(data_dir: str | Path) -> Path:
    """Where experiments keep downloaded ImageNet weights: beside the datasets, so workers that
    share --data-dir share them."""
    return Path(data_dir).expanduser() / "pretrained"


def check_pretrained(
    name: str, path_or_auto: str, image_size: int, num_classes: int, cache_dir: Path
) -> None:
    """Before any experiment starts: fetch "auto" weights and check the file fits `name` (keys,
    shapes, adaptation), on a model built on the meta device. ConfigError in one line."""
    from .models import create_model

    path, _ = resolve_pretrained(name, path_or_auto, cache_dir, progress=True)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(FLAG, str(path), f"unreadable as a state dict ({first})") from None
    with torch.device("meta"):
        model = create_model(name, num_classes, image_size=image_size)
    adapt_state_dict(model, name, state, image_size, path=str(path))


def file_id(path: Path) -> str:
    """The weights' identity: "sha256:<hex>" of the file."""
    return "sha256:" + file_digest(Path(path), "sha256")


def resolve_pretrained(
    name: str, path_or_auto: str | Path, cache_dir: Path | None = None, progress: bool = True
) -> tuple[Path, str]:
    """The weight file for model `name` and its identity ("sha256:<hex>"): `path_or_auto` as
    given, or for "auto" PyTorch's published file, downloaded into `cache_dir` if absent and
    checked against the sha256 prefix in its name."""
    if name not in URLS:
        raise ConfigError(FLAG, str(path_or_auto), f"ImageNet weights exist for {', '.join(URLS)}")
    if str(path_or_auto) != "auto":
        path = Path(path_or_auto)
        if not path.is_file():
            raise ConfigError(FLAG, str(path), "no such file (a torchvision .pth, or auto)")
        return path, file_id(path)
    url = URLS[name]
    path = Path(cache_dir or default_cache_dir()) / url.rsplit("/", 1)[1]
    prefix = _HASH_IN_NAME.search(path.name)
    if not path.is_file():
        part = path.with_name(f".{path.name}.unverified")
        try:
            download_file([url], part, None, progress)
        except DownloadError as e:
            why = "; ".join(f"{f.url}: {f.reason}" for f in e.failures)
            raise ConfigError(
                FLAG, "auto", f"download failed ({why}); fetch {url} by hand and pass its path"
            ) from None
        except DataError as e:  # the cache directory cannot be written
            raise ConfigError(FLAG, "auto", str(e).removeprefix("--data-dir: ")) from None
        digest = file_digest(part, "sha256")
        if prefix and not digest.startswith(prefix.group(1)):
            part.unlink(missing_ok=True)
            raise ConfigError(
                FLAG, "auto", f"{url} has sha256 {digest[:16]}..., not {prefix.group(1)}...; retry"
            )
        os.replace(part, path)
        return path, "sha256:" + digest
    ident = file_id(path)
    if prefix and not ident.removeprefix("sha256:").startswith(prefix.group(1)):
        raise ConfigError(
            FLAG, "auto", f"{path} fails its sha256 prefix {prefix.group(1)}; delete it to retry"
        )
    return path, ident


# -- expected torchvision layout ----------------------------------------------------------------


def _file_key(name: str, key: str) -> str:
    """Our state-dict key as torchvision names it."""
    return (
        "fc." + key.removeprefix("classifier.")
        if name in ("resnet34", *IMAGENET_MODELS) and key.startswith("classifier.")
        else key
    )


def _normalise(name: str, key: str) -> str:
    """A file key in today's torchvision names (ViT MLPs were `linear_1` / `linear_2`)."""
    if name == "vit_b":
        key = re.sub(r"\.mlp\.linear_1\.", ".mlp.0.", key)
        key = re.sub(r"\.mlp\.linear_2\.", ".mlp.3.", key)
    return key


def expected_shapes(model: TapNet, name: str) -> dict[str, tuple[int, ...]]:
    """torchvision key -> shape of the ImageNet file for `model` (1000 classes, 224 px)."""
    want = {_file_key(name, k): tuple(v.shape) for k, v in model.state_dict().items()}
    if name in IMAGENET_MODELS:
        pass  # built for ImageNet: the file's shapes are the model's own
    elif name == "resnet34":
        want |= {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 512), "fc.bias": (1000,)}
    elif name == "vgg19_bn":
        hidden = want["classifier.0.weight"][0]
        want |= {"classifier.0.weight": (hidden, 512 * 7 * 7)}
        want |= {"classifier.6.weight": (1000, hidden), "classifier.6.bias": (1000,)}
    else:
        dim = want["class_token"][-1]
        want |= {"conv_proj.weight": (dim, 3, 16, 16), "encoder.pos_embedding": (1, 197, dim)}
        want |= {"heads.head.weight": (1000, dim), "heads.head.bias": (1000,)}
    return want


# Keys not taken from the file: the replaced stem and the new classifiers.
_FRESH = {
    "resnet34": ("conv1.weight", "fc."),
    "vgg19_bn": ("classifier.0.", "classifier.6."),
    "vit_b": ("heads.head.",),
    **{name: () for name in IMAGENET_MODELS},
}


def _check(name: str, path: str, state: object, want: Mapping[str, tuple[int, ...]]) -> dict:
    """The file's state dict in today's key names, or ConfigError (one line) on any mismatch."""
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        kind = type(state).__name__
        raise ConfigError(FLAG, path, f"not a state dict (a {kind}); expected torchvision {name}")
    have = {_normalise(name, str(k)): v for k, v in state.items()}
    for key, shape in want.items():
        if key not in have:
            if key.endswith("num_batches_tracked"):
                continue  # older torchvision files have none
            raise ConfigError(
                FLAG, path, f"not torchvision {name} weights: {key} missing (expected {shape})"
            )
        if tuple(have[key].shape) != shape:
            raise ConfigError(
                FLAG,
                path,
                f"not torchvision {name} weights: {key} has shape {tuple(have[key].shape)}, "
                f"expected {shape}",
            )
    extra = [k for k in have if k not in want]
    if extra:
        raise ConfigError(
            FLAG,
            path,
            f"not torchvision {name} weights: unexpected key {extra[0]} "
            f"(shape {tuple(have[extra[0]].shape)})",
        )
    return have


# -- adaptation ---------------------------------------------------------------------------------


def resize_positions(pos: Tensor, grid: int, layout: str = "torchvision") -> Tensor:
    """(1, 1 + n*n, D) position embedding with the class position first -> (1, 1 + grid^2, D),
    the n x n grid resized bilinearly with aligned corners; `layout="reference"`: KD_wo_CE's
    reading (class = last position, grid = the first n*n)."""
    if layout not in POS_LAYOUTS:
        raise ValueError(f"pos_layout {layout!r}; allowed: {', '.join(POS_LAYOUTS)}")
    n = round((pos.shape[1] - 1) ** 0.5)
    cls, cells = (pos[:, :1], pos[:, 1:]) if layout == "torchvision" else (pos[:, -1:], pos[:, :-1])
    cells = cells.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    cells = F.interpolate(cells, size=(grid, grid), mode="bilinear", align_corners=True)
    return torch.cat([cls, cells.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)


def adapt_state_dict(
    model: TapNet,
    name: str,
    state: object,
    image_size: int,
    *,
    path: str = "<state dict>",
    pos_layout: str = "torchvision",
) -> dict[str, Tensor]:
    """Check a torchvision ImageNet state dict against `model` and adapt it: our key -> tensor
    for every entry taken from the file (the fresh stem and classifiers are left out)."""
    have = _check(name, path, state, expected_shapes(model, name))
    ours = {_file_key(name, k): k for k in model.state_dict()}
    out = {ours[k]: v for k, v in have.items() if not k.startswith(_FRESH[name]) and k in ours}
    if name == "vit_b":
        patch = image_size // 8
        if patch != model.conv_proj.kernel_size[0]:
            raise ValueError(f"vit_b for {image_size} px has patch {patch}, the model another")
        out["conv_proj.weight"] = F.adaptive_avg_pool2d(have["conv_proj.weight"], patch)
        out["encoder.pos_embedding"] = resize_positions(
            have["encoder.pos_embedding"], 8, pos_layout
        )
    return out


@torch.no_grad()
def load_pretrained(
    model: TapNet,
    name: str,
    path_or_auto: str | Path,
    image_size: int,
    *,
    cache_dir: Path | None = None,
    generator: torch.Generator | None = None,
    pos_layout: str = "torchvision",
    progress: bool = True,
) -> str:
    """Load ImageNet weights into `model` (a `name` built for `image_size`), re-initialise its
    classifier as the spec says (from `generator`), and return the file's identity."""
    path, ident = resolve_pretrained(name, path_or_auto, cache_dir, progress)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(FLAG, str(path), f"unreadable as a state dict ({first})") from None
    adapted = adapt_state_dict(
        model, name, state, image_size, path=str(path), pos_layout=pos_layout
    )
    ours = model.state_dict()
    for key, value in adapted.items():
        ours[key].copy_(value)
    if name in IMAGENET_MODELS:
        pass  # mdistiller's teachers: every weight from the file, the 1000-way fc included
    elif name == "resnet34":
        _normal_head(model.classifier, generator)
    elif name == "vgg19_bn":
        _normal_head(model.classifier[0], generator)
        _normal_head(model.classifier[6], generator)
    else:
        nn.init.zeros_(model.heads.head.weight)
        nn.init.zeros_(model.heads.head.bias)
    return ident


def _normal_head(linear: nn.Linear, generator: torch.Generator | None) -> None:
    nn.init.normal_(linear.weight, 0.0, 0.01, generator=generator)
    nn.init.zeros_(linear.bias)
