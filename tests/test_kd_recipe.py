"""The KD recipes: AdamW + OneCycle per batch beside SGD, presets, and hashes of old configs."""

from __future__ import annotations

import pytest
import torch

from sublim.errors import ConfigError
from sublim.kd.config import KD_PRESETS, KDConfig, preset_fields


def _torch_onecycle(config: KDConfig, steps: int) -> list[tuple[float, float]]:
    """(lr, beta1) before every step under PyTorch's own OneCycleLR, as the reference uses it."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps, pct_start=0.3
    )
    out = []
    for _ in range(config.epochs * steps):
        g = opt.param_groups[0]
        out.append((g["lr"], g["betas"][0]))
        opt.step()
        sched.step()
    return out


def test_onecycle_matches_pytorch_every_step() -> None:
    config = KDConfig(optimizer="adamw", schedule="onecycle", epochs=4, lr=0.05, weight_decay=0.01)
    want = _torch_onecycle(config, steps=7)
    got = [config.onecycle_at(i, 7) for i in range(4 * 7)]
    for (lr, b1), (wlr, wb1) in zip(got, want, strict=True):
        assert lr == pytest.approx(wlr, rel=1e-12) and b1 == pytest.approx(wb1, rel=1e-12)
    assert max(lr for lr, _ in got) == pytest.approx(0.05, rel=0.01)  # the peak falls between steps


def test_onecycle_reference_plan_never_reaches_the_end() -> None:
    exact = KDConfig(schedule="onecycle", epochs=2, lr=0.1)
    ref = exact.replace(onecycle_plan="reference")
    last = 2 * 10 - 1
    assert exact.onecycle_at(last, 10)[0] == pytest.approx(0.1 / 25 / 1e4)
    assert ref.onecycle_at(last, 10)[0] > 10 * exact.onecycle_at(last, 10)[0]
    assert exact.config_hash != ref.config_hash


def test_presets_are_the_papers_protocols() -> None:
    fifty = preset_fields("kd-wo-ce-50e", "student", "resnet9", "fkd")
    assert fifty["optimizer"] == "adamw" and fifty["schedule"] == "onecycle"
    assert (fifty["epochs"], fifty["weight_decay"], fifty["lr"]) == (50, 0.01, 0.05)
    assert preset_fields("kd-wo-ce-50e", "student", "vgg11_bn", "fkd")["lr"] == 0.01
    assert preset_fields("kd-wo-ce-50e", "teacher", "resnet34")["lr"] == 0.01  # baselines
    sgd = preset_fields("kd-wo-ce-240e", "student", "resnet9", "kd")
    assert (sgd["optimizer"], sgd["milestones"], sgd["epochs"]) == ("sgd", (150, 180, 210), 240)
    for name in KD_PRESETS:  # every preset makes a valid experiment
        KDConfig(role="teacher", model="resnet9", **preset_fields(name, "teacher", "resnet9"))
    with pytest.raises(ConfigError, match="--preset"):
        preset_fields("fast", "teacher", "resnet9")


def test_old_experiments_keep_their_hashes() -> None:
    # directories of experiments made before the AdamW/OneCycle fields existed keep their names
    assert KDConfig(dataset="cifar10", model="resnet8").config_hash == "b6fbd4e715cb56cc"
    student = KDConfig(
        role="student", dataset="cifar10", model="resnet8", teacher="resnet14", method="kd"
    )
    assert student.config_hash == "d68fdbe07b73c639"


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"optimizer": "adam"}, "--optimizer"),
        ({"schedule": "onecycle", "warmup_epochs": 2}, "--warmup-epochs"),
        ({"optimizer": "adamw", "nesterov": True}, "--nesterov"),
        ({"pct_start": 1.5}, "--pct-start"),
        ({"onecycle_plan": "torch"}, "--onecycle-plan"),
        ({"ce_weight": -1.0}, "--ce-weight"),
    ],
)
def test_bad_recipes_name_the_flag(changes: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        KDConfig(**changes)


def test_recipe_fields_enter_the_hash_only_where_they_matter() -> None:
    base = KDConfig(optimizer="adamw", schedule="onecycle")
    assert base.config_hash != base.replace(pct_start=0.25).config_hash
    assert base.config_hash == base.replace(momentum=0.5).config_hash  # SGD's only
    cos = KDConfig()
    assert cos.config_hash == cos.replace(pct_start=0.25).config_hash  # onecycle's only
    assert cos.config_hash == cos.replace(backbone_lr_mult=0.5).config_hash  # pretrained only


def test_methods_whose_defaults_changed_get_new_hashes() -> None:
    def student(method: str) -> KDConfig:
        return KDConfig(
            role="student", dataset="cifar10", model="wrn_16_2", teacher="wrn_40_2", method=method
        )

    for method in ("at", "ft", "logit_std"):
        assert student(method).result_dict()["method_revision"] == 2
    assert "method_revision" not in student("kd").result_dict()
