"""ImageNet teachers: torchvision-layout state dicts (generated here with torchvision's key names
and shapes) checked, adapted and loaded; one-line errors; "auto" against a local HTTP server."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler

import pytest
import torch
from quiet_http import QuietServer

from sublim.errors import ConfigError
from sublim.kd import pretrained
from sublim.kd.models import TapNet, create_model
from sublim.kd.pretrained import (
    adapt_state_dict,
    expected_shapes,
    load_pretrained,
    resize_positions,
    resolve_pretrained,
)


def _meta(name: str, classes: int = 10, size: int = 32) -> TapNet:
    with torch.device("meta"):
        return create_model(name, classes, image_size=size)


def _torchvision_resnet34(model: TapNet, seed: int = 5) -> dict[str, torch.Tensor]:
    """A torchvision resnet34 ImageNet state dict (random values): our keys with `fc.` for
    `classifier.`, the 7x7 stem and the 1000-way fc."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("classifier.", "fc.")
        shape = {"conv1.weight": (64, 3, 7, 7), "fc.weight": (1000, 512), "fc.bias": (1000,)}
        shape = shape.get(k, tuple(v.shape))
        out[k] = (
            torch.randint(0, 9, shape, generator=g)
            if v.dtype == torch.long
            else torch.randn(shape, generator=g)
        )
    return out


def _torchvision_vit(model: TapNet, old_mlp_names: bool = False) -> dict[str, torch.Tensor]:
    """A torchvision ViT-x/16 ImageNet state dict in `model`'s width: 16x16 patches, 197
    positions, 1000-way head; optionally with the pre-0.13 `mlp.linear_1/2` names."""
    g = torch.Generator().manual_seed(7)
    dim = model.class_token.shape[-1]
    big = {
        "conv_proj.weight": (dim, 3, 16, 16),
        "encoder.pos_embedding": (1, 197, dim),
        "heads.head.weight": (1000, dim),
        "heads.head.bias": (1000,),
    }
    out = {}
    for k, v in model.state_dict().items():
        shape = big.get(k, tuple(v.shape))
        if old_mlp_names:
            k = k.replace(".mlp.0.", ".mlp.linear_1.").replace(".mlp.3.", ".mlp.linear_2.")
        out[k] = torch.randn(shape, generator=g)
    return out


# ------------------------------------------------------------------------------------------------
# resnet34: a real file, loaded and adapted
# ------------------------------------------------------------------------------------------------


def test_resnet34_file_loads_with_a_fresh_stem_and_classifier(tmp_path) -> None:
    model = create_model("resnet34", 10, generator=torch.Generator().manual_seed(0))
    stem = model.conv1.weight.clone()
    state = _torchvision_resnet34(model)
    path = tmp_path / "resnet34.pth"
    torch.save(state, path)
    ident = load_pretrained(
        model, "resnet34", path, 32, generator=torch.Generator().manual_seed(1), progress=False
    )
    assert ident == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    ours = model.state_dict()
    assert torch.equal(ours["layer3.5.conv2.weight"], state["layer3.5.conv2.weight"])
    assert torch.equal(
        ours["layer2.0.downsample.1.running_var"], state["layer2.0.downsample.1.running_var"]
    )
    assert torch.equal(ours["bn1.weight"], state["bn1.weight"])  # the stem's BN is ImageNet's
    assert torch.equal(model.conv1.weight, stem)  # the 3x3 stem keeps its own He init
    assert abs(model.classifier.weight.std().item() - 0.01) < 1e-3
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert model.classifier.weight.shape == (10, 512)


def test_files_without_num_batches_tracked_load(tmp_path) -> None:
    model = create_model("resnet34", 10)
    state = {k: v for k, v in _torchvision_resnet34(model).items() if "num_batches" not in k}
    torch.save(state, tmp_path / "old.pth")
    load_pretrained(model, "resnet34", tmp_path / "old.pth", 32, progress=False)
    assert torch.equal(model.layer1[0].bn1.running_mean, state["layer1.0.bn1.running_mean"])


# ------------------------------------------------------------------------------------------------
# vgg19_bn: torchvision's shapes, the re-initialised classifier.0 / .6
# ------------------------------------------------------------------------------------------------


def test_vgg19_bn_expected_shapes_are_torchvisions() -> None:
    want = expected_shapes(_meta("vgg19_bn"), "vgg19_bn")
    assert want["features.0.weight"] == (64, 3, 3, 3)
    assert want["features.50.running_var"] == (512,)
    assert want["classifier.0.weight"] == (4096, 25088)
    assert want["classifier.3.weight"] == (4096, 4096)
    assert want["classifier.6.weight"] == (1000, 4096)
    assert len([k for k in want if k.startswith("features.")]) == 16 * 2 + 16 * 5


def test_vgg19_bn_loads_all_but_classifier_0_and_6(tmp_path, monkeypatch) -> None:
    model = create_model("vgg19_bn", 10, generator=torch.Generator().manual_seed(0))
    want = expected_shapes(model, "vgg19_bn")
    # stride-0 tensors: torchvision's shapes (a 25088-wide classifier.0) without the memory
    state = {k: torch.full((), float(i % 7)).expand(s) for i, (k, s) in enumerate(want.items())}
    (tmp_path / "vgg.pth").write_bytes(b"placeholder")
    monkeypatch.setattr(pretrained.torch, "load", lambda *a, **k: state)
    load_pretrained(
        model, "vgg19_bn", tmp_path / "vgg.pth", 32, generator=torch.Generator(), progress=False
    )
    ours = model.state_dict()
    for key in ("features.49.weight", "features.50.running_mean", "classifier.3.bias"):
        assert torch.equal(ours[key], state[key].expand_as(ours[key]))
    for i in (0, 6):
        assert abs(model.classifier[i].weight.std().item() - 0.01) < 1e-3
        assert torch.count_nonzero(model.classifier[i].bias) == 0


# ------------------------------------------------------------------------------------------------
# vit_b: patch kernel, position grid, head (a narrower ViT in the same layout keeps it fast)
# ------------------------------------------------------------------------------------------------


def test_vit_b_expected_shapes_are_torchvisions() -> None:
    want = expected_shapes(_meta("vit_b", 200, 64), "vit_b")
    assert want["conv_proj.weight"] == (768, 3, 16, 16)
    assert want["encoder.pos_embedding"] == (1, 197, 768)
    assert want["heads.head.weight"] == (1000, 768)
    assert want["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"] == (2304, 768)


@pytest.mark.parametrize(("size", "patch"), [(32, 4), (64, 8)])
def test_vit_patch_kernel_is_average_pooled(size: int, patch: int) -> None:
    model = _meta("vit_ett", 10, size)
    state = _torchvision_vit(_meta("vit_ett", 10, size))
    state = {k: torch.randn(v.shape) for k, v in state.items()}
    out = adapt_state_dict(model, "vit_b", state, size)
    w, k = state["conv_proj.weight"], 16 // patch
    expected = w.reshape(192, 3, patch, k, patch, k).mean(dim=(3, 5))
    torch.testing.assert_close(out["conv_proj.weight"], expected)
    assert "heads.head.weight" not in out
    assert out["encoder.pos_embedding"].shape == (1, 65, 192)


def test_position_grid_resized_with_the_class_position_first() -> None:
    rows = torch.arange(14.0).repeat_interleave(14)  # cell (r, c) holds (r, c, 0)
    cols = torch.arange(14.0).repeat(14)
    grid = torch.stack([rows, cols, torch.zeros(196)], dim=1)
    pos = torch.cat([torch.tensor([[-1.0, -1.0, 99.0]]), grid])[None]  # (1, 197, 3)
    new = resize_positions(pos, 8)
    assert new.shape == (1, 65, 3)
    assert new[0, 0].tolist() == [-1.0, -1.0, 99.0]  # class position kept, first
    cells = new[0, 1:].reshape(8, 8, 3)
    assert cells[0, 0].tolist() == [0.0, 0.0, 0.0] and cells[7, 7].tolist() == [13.0, 13.0, 0.0]
    torch.testing.assert_close(cells[:, 3, 0], torch.linspace(0, 13, 8))  # bilinear, corners
    # KD_wo_CE's off-by-one: the last cell taken for the class, the real class in the grid
    ref = resize_positions(pos, 8, layout="reference")
    assert ref[0, 0].tolist() == [13.0, 13.0, 0.0]
    assert ref[0, 1].tolist() == [-1.0, -1.0, 99.0]
    with pytest.raises(ValueError, match="reference"):
        resize_positions(pos, 8, layout="timm")


def test_vit_file_with_old_mlp_names_loads_and_the_head_stays_zero(tmp_path) -> None:
    model = create_model("vit_ett", 10, generator=torch.Generator().manual_seed(0))
    state = _torchvision_vit(model, old_mlp_names=True)
    torch.save(state, tmp_path / "vit.pth")
    load_pretrained(model, "vit_b", tmp_path / "vit.pth", 32, progress=False)
    layer = "encoder.layers.encoder_layer_3."
    assert torch.equal(
        model.state_dict()[layer + "mlp.0.weight"], state[layer + "mlp.linear_1.weight"]
    )
    assert torch.equal(model.class_token, state["class_token"])
    assert torch.count_nonzero(model.heads.head.weight) == 0


# ------------------------------------------------------------------------------------------------
# Wrong files: one line naming --pretrained, the key and both shapes
# ------------------------------------------------------------------------------------------------


def _error(tmp_path, name: str, payload: object, size: int = 32) -> str:
    path = tmp_path / "w.pth"
    if isinstance(payload, bytes):
        path.write_bytes(payload)
    else:
        torch.save(payload, path)
    with pytest.raises(ConfigError) as err:
        load_pretrained(_meta(name, 10, size), name, path, size, progress=False)
    message = str(err.value)
    assert message.startswith("--pretrained: ") and "\n" not in message
    return message


def test_wrong_shape_names_the_key_and_both_shapes(tmp_path) -> None:
    state = _torchvision_resnet34(_meta("resnet34"))
    state["layer3.1.conv1.weight"] = torch.zeros(256, 256, 1, 1)
    msg = _error(tmp_path, "resnet34", state)
    assert "layer3.1.conv1.weight has shape (256, 256, 1, 1), expected (256, 256, 3, 3)" in msg


def test_missing_and_unexpected_keys(tmp_path) -> None:
    state = _torchvision_resnet34(_meta("resnet34"))
    del state["layer4.2.bn2.bias"]
    assert "layer4.2.bn2.bias missing (expected (512,))" in _error(tmp_path, "resnet34", state)
    state = _torchvision_resnet34(_meta("resnet34"))
    state["layer4.2.conv3.weight"] = torch.zeros(2048, 512, 1, 1)  # a resnet50-style key
    assert "unexpected key layer4.2.conv3.weight" in _error(tmp_path, "resnet34", state)


def test_file_of_another_model(tmp_path) -> None:
    msg = _error(tmp_path, "vgg19_bn", _torchvision_resnet34(_meta("resnet34")))
    assert "not torchvision vgg19_bn weights: features.0.weight missing" in msg
    # a 32 px teacher and the vit_b's 16x16 patches: a resnet file is not a ViT either
    assert "class_token missing" in _error(
        tmp_path, "vit_b", _torchvision_resnet34(_meta("resnet34"))
    )


def test_not_a_state_dict_or_not_a_file(tmp_path) -> None:
    assert "not a state dict (a list)" in _error(tmp_path, "resnet34", [torch.zeros(1)])
    assert "not a state dict (a dict)" in _error(tmp_path, "resnet34", {"model": {"a": 1}})
    assert "unreadable" in _error(tmp_path, "resnet34", b"not a pickle at all")
    with pytest.raises(ConfigError, match="--pretrained.*no such file"):
        resolve_pretrained("resnet34", tmp_path / "absent.pth")
    with pytest.raises(ConfigError, match="--pretrained.*resnet34, vgg19_bn, vit_b"):
        resolve_pretrained("resnet9", "auto")


# ------------------------------------------------------------------------------------------------
# "auto": download from a real HTTP server on 127.0.0.1, sha256 prefix from the file name
# ------------------------------------------------------------------------------------------------

BODY = b"pretend weights " * 4096
PREFIX = hashlib.sha256(BODY).hexdigest()[:8]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.server.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    srv = QuietServer(("127.0.0.1", 0), Handler)
    srv.routes = {}
    srv.url = f"http://127.0.0.1:{srv.server_port}"
    thread = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_auto_downloads_checks_the_prefix_and_then_uses_the_cache(server, tmp_path, monkeypatch):
    server.routes[f"/models/resnet34-{PREFIX}.pth"] = BODY
    monkeypatch.setitem(pretrained.URLS, "resnet34", f"{server.url}/models/resnet34-{PREFIX}.pth")
    path, ident = resolve_pretrained("resnet34", "auto", tmp_path, progress=False)
    assert path == tmp_path / f"resnet34-{PREFIX}.pth" and path.read_bytes() == BODY
    assert ident == "sha256:" + hashlib.sha256(BODY).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    server.routes.clear()  # the second call never asks the server
    assert resolve_pretrained("resnet34", "auto", tmp_path, progress=False) == (path, ident)


def test_auto_rejects_a_file_whose_hash_is_not_its_names(server, tmp_path, monkeypatch, capsys):
    server.routes["/models/vgg19_bn-00000000.pth"] = BODY
    monkeypatch.setitem(pretrained.URLS, "vgg19_bn", f"{server.url}/models/vgg19_bn-00000000.pth")
    with pytest.raises(ConfigError, match="--pretrained.*sha256 .*not 00000000"):
        resolve_pretrained("vgg19_bn", "auto", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # nothing unverified is kept
    monkeypatch.setitem(pretrained.URLS, "vit_b", f"{server.url}/models/vit_b_16-c867db91.pth")
    with pytest.raises(ConfigError, match="--pretrained.*download failed.*404"):
        resolve_pretrained("vit_b", "auto", tmp_path, progress=False)  # not served: 404


def test_pretrained_teacher_config_hash_and_backbone_learning_rate(tmp_path) -> None:
    from sublim.kd.config import KDConfig
    from sublim.kd.train import _optimizer, _stage_params, build_models, set_lr

    path = tmp_path / "r34.pth"
    torch.save(_torchvision_resnet34(create_model("resnet34", 10)), path)
    base = dict(role="teacher", model="resnet34", dataset="cifar10", optimizer="adamw")
    config = KDConfig(pretrained=str(path), **base)
    assert config.pretrained_id.startswith("sha256:")
    assert config.config_hash != KDConfig(**base).config_hash  # the weights enter the hash
    moved = tmp_path / "copy.pth"
    moved.write_bytes(path.read_bytes())  # same file elsewhere: same experiment
    assert KDConfig(pretrained=str(moved), **base).config_hash == config.config_hash
    assert KDConfig(pretrained="auto", **base).pretrained_id == "torchvision:resnet34-b627a593.pth"
    models = build_models(config, torch.device("cpu"), None)
    state = torch.load(path, weights_only=True)
    assert torch.equal(models.student.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    opt = _optimizer(config, _stage_params(config, models, "main"))
    set_lr(opt, 0.1, 0.9)
    lrs = {g["lr_mult"]: (g["lr"], g["betas"][0]) for g in opt.param_groups}
    assert lrs == {0.01: (pytest.approx(0.001), 0.9), 1.0: (0.1, 0.9)}
    head = {id(p) for p in models.student.param_groups()["head"]}
    assert {id(p) for p in opt.param_groups[1]["params"]} == head


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet9", "--pretrained", "auto"], "ImageNet weights exist for resnet34"),
        (["--model", "resnet34", "--pretrained", "missing.pth"], "cannot read it"),
    ],
)
def test_bad_pretrained_flags_are_one_line(tmp_path, args, message) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "kd", "train-teacher", *args, "--outdir", "o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--pretrained" in proc.stderr and message in proc.stderr
    assert not (tmp_path / "o").exists()


def test_wrong_file_is_refused_before_anything_is_written(tmp_path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(2, 2)}, bad)
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "kd", "train-teacher", "--model", "resnet34"]
        + ["--pretrained", str(bad), "--outdir", "o", "--dataset", "cifar10"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("sublim: error: --pretrained")
    assert not (tmp_path / "o").exists()
