"""Parsing and validation of configs: layer configs, perturbation specs, arch specs, hashes."""

from __future__ import annotations

import json

import pytest

from sublim.config import ExperimentConfig
from sublim.config.layerconf import parse_bool, resolve_init, resolve_trainable
from sublim.config.perturbspec import PerturbSpec, parse_json, parse_shorthand
from sublim.errors import ConfigError

NAMES = ["fc1", "fc2", "class_head", "aux_head"]


@pytest.mark.parametrize("word", ["true", "TRUE", "1", "yes", "Y", "t", "T"])
def test_true_words(word: str) -> None:
    assert parse_bool(word, "--x") is True


@pytest.mark.parametrize("word", ["false", "False", "0", "no", "N", "f"])
def test_false_words(word: str) -> None:
    assert parse_bool(word, "--x") is False


def test_bad_bool_names_flag_and_allowed_words() -> None:
    with pytest.raises(ConfigError, match=r"--student-trainable.*maybe.*true/false"):
        parse_bool("maybe", "--student-trainable")


def test_positional_init() -> None:
    assert resolve_init("a,B,random,RANDOM", NAMES, "--i") == {
        "fc1": "A",
        "fc2": "B",
        "class_head": "random",
        "aux_head": "random",
    }


def test_named_init_with_all_applied_first_whatever_its_position() -> None:
    got = resolve_init("fc1:random,all:B", NAMES, "--i")
    assert got == {"fc1": "random", "fc2": "B", "class_head": "B", "aux_head": "B"}


def test_named_without_all_keeps_default() -> None:
    assert resolve_trainable("aux_head:false", NAMES, "--t") == {
        "fc1": True,
        "fc2": True,
        "class_head": True,
        "aux_head": False,
    }


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("A,A,A", "3 positional entries for 4 layers"),
        ("A,A,A,A,A", "5 positional entries"),
        ("A,fc1:B", "mixes positional and name:value"),
        ("fc3:A", "unknown layer; available: all, fc1, fc2, class_head, aux_head"),
        ("A,,A,A", "empty entry"),
        ("C,A,A,A", r"init source \(A, B or random\)"),
    ],
)
def test_bad_layer_configs(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve_init(text, NAMES, "--student-init")


def test_perturb_shorthand_full() -> None:
    spec = parse_shorthand(
        "student:fc1+aux_head,std=0.1,timing=after_teacher_training,"
        "include_weight=true,include_bias=no"
    )
    assert spec == PerturbSpec(
        target="student",
        layers=("fc1", "aux_head"),
        std=0.1,
        timing="after_teacher_training",
        include_weight=True,
        include_bias=False,
    )


def test_perturb_defaults_and_sigma_alias() -> None:
    spec = parse_shorthand("teacher,sigma=0.5")
    assert (spec.target, spec.layers, spec.std, spec.timing) == (
        "teacher",
        ("all",),
        0.5,
        "before_student_training",
    )


def test_perturb_json_object_and_list() -> None:
    one = parse_json('{"layers": ["aux_head"], "std": 0.2}')
    two = parse_json(json.dumps([{"target": "teacher", "layers": "all"}, {"std": 0}]))
    assert one[0].layers == ("aux_head",) and one[0].std == 0.2
    assert [s.target for s in two] == ["teacher", "student"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("student:aux_head,std=-0.1", "std"),
        ("student:aux_head,std=abc", "std"),
        ("student:aux_head,timing=later", "timing"),
        ("robot:aux_head", "target"),
        ("student:aux_head,distribution=laplace", "distribution"),
        ("student:aux_head,colour=red", "unknown perturbation field"),
        ("student:aux_head,include_bias=maybe", "include_bias"),
        ("student:aux_head,std=0.1,sigma=0.2", "std or sigma"),
    ],
)
def test_bad_perturb_shorthand(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_shorthand(text)


def test_perturb_unknown_layer_is_checked_against_the_target_model() -> None:
    with pytest.raises(ConfigError, match="unknown student layer; available: all, fc1"):
        ExperimentConfig(perturb=(parse_shorthand("student:fc3,std=0.1"),))
    ExperimentConfig(
        teacher_hidden_dims=(256, 256, 256), perturb=(parse_shorthand("teacher:fc3,std=0.1"),)
    )


def test_defaults_match_reference() -> None:
    c = ExperimentConfig()
    assert (c.seed, c.m, c.teacher_epochs, c.student_epochs) == (42, 10, 5, 5)
    assert (c.data_bsize, c.noise_bsize, c.noise_steps) == (1024, 1000, 60)
    assert (c.teacher_lr, c.student_lr, c.perlin_res, c.eval_noise_batches) == (1e-3, 1e-3, 4, 10)
    assert (c.data_dir, c.outdir, c.noise_dist, c.dataset) == (
        "./MNIST",
        "./outputs",
        "uniform",
        "mnist",
    )
    assert c.layer_names("student") == NAMES


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"m": 0}, "--m"),
        ({"noise_steps": -1}, "--noise-steps"),
        ({"data_bsize": 0}, "--data-bsize"),
        ({"teacher_lr": 0.0}, "--teacher-lr"),
        ({"temperature": float("nan")}, "--temperature"),
        ({"dataset": "cifar"}, "--dataset.*mnist, fashion-mnist, kmnist, emnist"),
        ({"dataset": "emnist", "emnist_split": "bogus"}, "--emnist-split"),
        ({"class_count": 11}, r"--class-count.*2\.\.10"),
        ({"dataset": "emnist", "class_count": 48}, r"2\.\.47 for emnist/balanced"),
        ({"classes": (0, 0)}, "--classes"),
        ({"classes": (0, 10)}, "--classes"),
        ({"classes": (0, 1), "class_count": 2}, "not both"),
        ({"teacher_hidden_dims": (256, 0)}, "--teacher-hidden-dims"),
        ({"student_type": "rnn"}, "--student-type"),
        ({"device": "tpu"}, "--device"),
        ({"distill_loss": "l1"}, "--distill-loss"),
        ({"student_trainable": "all:maybe"}, "--student-trainable"),
    ],
)
def test_invalid_configs(changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig(**changes)


def test_emnist_class_counts() -> None:
    assert ExperimentConfig(dataset="emnist", emnist_split="letters").num_classes == 26
    assert ExperimentConfig(dataset="emnist", class_count=47).num_classes == 47
    assert ExperimentConfig(classes=(3, 1)).num_classes == 2


def test_hash_ignores_spelling_and_output_fields() -> None:
    base = ExperimentConfig()
    same = [
        ExperimentConfig(teacher_init="A,A,A,A", student_trainable="1,yes,t,TRUE"),
        ExperimentConfig(outdir="/elsewhere", data_dir="/data", device="cpu", run_label="x"),
        ExperimentConfig(temperature=3.0),  # only read by the kl loss
        ExperimentConfig(perlin_res=8),  # only read by perlin noise
    ]
    assert all(c.config_hash == base.config_hash for c in same)
    assert (
        ExperimentConfig(class_count=3).config_hash
        == ExperimentConfig(classes=(0, 1, 2)).config_hash
    )
    different = [
        ExperimentConfig(seed=1),
        ExperimentConfig(m=11),
        ExperimentConfig(student_init="random,A,A,A"),
        ExperimentConfig(distill_loss="kl"),
        ExperimentConfig(classes=(1, 0)),
        ExperimentConfig(perturb=(parse_shorthand("student:aux_head,std=0.1"),)),
    ]
    hashes = {c.config_hash for c in different} | {base.config_hash}
    assert len(hashes) == len(different) + 1


def test_from_dict_round_trip() -> None:
    c = ExperimentConfig(
        classes=(3, 8), student_hidden_dims=(64,), perturb=(parse_shorthand("teacher:fc1"),)
    )
    again = ExperimentConfig.from_dict(json.loads(json.dumps(c.to_dict())))
    assert again == c and again.config_hash == c.config_hash
    with pytest.raises(ConfigError, match="unknown config field"):
        ExperimentConfig.from_dict({"noise_step": 3})


CNN = [
    {"name": "c1", "type": "conv", "out_channels": 8, "padding": 1, "pool": {"type": "max"}},
    {
        "name": "c2",
        "type": "conv2d",
        "out_channels": 16,
        "activation": "gelu",
        "pool": {"type": "adaptive_avg", "output_size": 3},
    },
    {"name": "f", "type": "linear", "out_features": 32, "activation": "tanh"},
]


def test_cnn_spec_names_shapes_and_adaptive_pool() -> None:
    c = ExperimentConfig(student_type="cnn", student_arch_spec=json.dumps(CNN))
    assert c.layer_names("student") == ["c1", "c2", "f", "class_head", "aux_head"]
    assert c.feature_shapes("student") == [(8, 14, 14), (16, 3, 3), (32,)]
    spec = c.arch_spec("student")
    assert spec[0]["kernel_size"] == 3 and spec[0]["pool"]["stride"] == 2


def test_default_cnn() -> None:
    c = ExperimentConfig(teacher_type="cnn", teacher_hidden_dims=(128,))
    assert c.layer_names("teacher") == ["conv1", "conv2", "fc1", "class_head", "aux_head"]
    assert c.feature_shapes("teacher") == [(32, 14, 14), (64, 7, 7), (128,)]


def test_long_inline_json_spec_is_parsed_not_opened() -> None:
    spec = CNN + [{"name": f"extra{i}", "type": "linear", "out_features": 16} for i in range(20)]
    text = json.dumps(spec)
    assert len(text) > 1000
    assert (
        ExperimentConfig(student_type="cnn", student_arch_spec=text).layer_names("student")[-3]
        == "extra19"
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("[{", "not valid JSON"),
        ('{"type": "conv"}', "non-empty JSON list"),
        ('[{"type": "conv"}]', "out_channels"),
        ('[{"type": "pool"}]', "conv2d"),
        ('[{"type": "conv", "out_channels": 4, "colour": 1}]', "allowed keys"),
        ('[{"type": "conv", "out_channels": 4, "activation": "swishy"}]', "activation"),
        ('[{"type": "conv", "out_channels": 4, "pool": {"type": "median"}}]', "pool type"),
        ('[{"type": "conv", "out_channels": 4, "kernel_size": 30}]', "empty"),
        ('[{"type": "linear", "out_features": 4}, {"type": "conv", "out_channels": 4}]', "before"),
        ('[{"name": "aux_head", "type": "linear", "out_features": 4}]', "name"),
    ],
)
def test_bad_cnn_specs(spec: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig(student_type="cnn", student_arch_spec=spec)
