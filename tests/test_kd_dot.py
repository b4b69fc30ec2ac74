"""DOT, mdistiller's distillation-oriented trainer: the optimizer against numbers from
mdistiller's own engine/dot.py (run on the same seeded float64 problem), and its rules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sublim.kd.dot import DOT

# mdistiller engine/dot.py@a08d46f, DistillationOrientedTrainer(lr 0.1, momentum 0.825,
# momentum_kd 0.975, weight_decay 5e-4), four steps of the problem below: each parameter's sum
# and first entry afterwards (float64)
REFERENCE_SUMS = [-1.623559951744, -0.339132445558, 0.16286307666, 0.360442759297]
REFERENCE_SUMS += [0.272714047368, -0.530500765765]
REFERENCE_FIRST = [-0.11150086138297398, -0.2919317437278922, -0.007994906607863853]
REFERENCE_FIRST += [0.39541406997851053, 0.3036296428130991, -0.41966707482139953]


def _problem() -> tuple[torch.nn.Module, ...]:
    """A shared layer (both losses), a task-only head and a distillation-only regressor."""
    torch.manual_seed(0)
    return tuple(torch.nn.Linear(i, o).double() for i, o in ((4, 3), (3, 2), (4, 3)))


def _losses(lin, head, extra, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (5,), generator=g)
    h = lin(x)
    task = F.cross_entropy(head(torch.relu(h)), y)
    kd = ((h - extra(x)) ** 2).mean() + (h**2).mean()
    return task, kd


def _train(steps: int = 4, **kw: float) -> list[torch.Tensor]:
    lin, head, extra = _problem()
    params = [*lin.parameters(), *head.parameters(), *extra.parameters()]
    opt = DOT(params, lr=0.1, **kw)
    for step in range(steps):
        task, kd = _losses(lin, head, extra, step)
        opt.zero_grad(set_to_none=True)
        kd.backward(retain_graph=True)
        opt.step_kd()
        opt.zero_grad(set_to_none=True)
        task.backward()
        opt.step()
    return [p.detach() for p in params]


def test_dot_equals_mdistillers_trainer_on_the_same_problem() -> None:
    params = _train(momentum=0.9, delta=0.075, weight_decay=5e-4)
    for p, total, first in zip(params, REFERENCE_SUMS, REFERENCE_FIRST, strict=True):
        assert float(p.sum()) == pytest.approx(total, rel=1e-10, abs=1e-12)
        assert float(p.flatten()[0]) == pytest.approx(first, rel=1e-10, abs=1e-12)


def test_dot_without_weight_decay_and_delta_is_sgd_on_the_summed_loss() -> None:
    """delta 0: both buffers share momentum 0.9, so the update is SGD's on task + kd."""
    ours = _train(momentum=0.9, delta=0.0)
    lin, head, extra = _problem()
    params = [*lin.parameters(), *head.parameters(), *extra.parameters()]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    for step in range(4):
        task, kd = _losses(lin, head, extra, step)
        sgd.zero_grad()
        (task + kd).backward()
        sgd.step()
    for a, b in zip(ours, params, strict=True):
        torch.testing.assert_close(a, b.detach(), rtol=1e-12, atol=1e-12)


def test_dot_refuses_a_delta_beyond_the_momentum() -> None:
    with pytest.raises(ValueError, match="delta"):
        DOT([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9, delta=1.0)


# ---------------------------------------------------------------------------------------------
# kd_dot in the training loop
# ---------------------------------------------------------------------------------------------


def _tiny_config(out, **kw):
    from kd_tiny import tiny

    return tiny(out, **{"train_limit": 60, "batch_size": 20, "test_limit": 40, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):
    from sublim.kd.runner import run_experiment

    out = tmp_path_factory.mktemp("dot")
    assert run_experiment(_tiny_config(out))["status"] == "completed"
    return out


def _student(teacher, into, method: str, **kw):
    from sublim.kd.experiment import experiment_dir

    ck = str(experiment_dir(_tiny_config(teacher)) / "best.pt")
    config = _tiny_config(teacher, role="student", teacher="resnet8", method=method, **kw)
    return config.replace(outdir=str(into), teacher_checkpoint_path=ck, epochs=2)


def test_kd_dot_trains_with_two_passes_and_at_delta_zero_equals_kd(teacher, tmp_path) -> None:
    """kd_dot's losses are KD's; DOT with delta 0 is SGD on their sum, so one epoch of kd_dot
    (delta 0) ends where kd ends, up to the order of floating-point additions."""
    from pathlib import Path

    from sublim.kd.runner import run_experiment

    runs = {}
    for name, method, params in (
        ("kd", "kd", {}),
        ("dot0", "kd_dot", {"delta": 0.0}),
        ("dot", "kd_dot", {}),
    ):
        config = _student(teacher, tmp_path / name, method, method_params=params)
        result = run_experiment(config)
        assert result["status"] == "completed", result
        runs[name] = torch.load(Path(result["dir"]) / "last.pt", weights_only=True)
    kd, dot0, dot = runs["kd"]["model"], runs["dot0"]["model"], runs["dot"]["model"]
    for key in kd:
        if kd[key].is_floating_point():
            torch.testing.assert_close(dot0[key], kd[key], rtol=1e-4, atol=1e-5)
    moved = [k for k in kd if kd[k].is_floating_point() and not torch.allclose(dot[k], kd[k])]
    assert moved  # delta 0.075 takes a different path
    state = runs["dot"]["optimizer"]["state"]
    assert any("momentum_kd_buffer" in s for s in state.values())  # DOT's own buffers, saved
    terms = runs["dot"]["history"]["terms"][-1]
    assert set(terms) == {"ce", "kd"}


def test_kd_dot_resumes_to_the_same_weights(teacher, tmp_path) -> None:
    from pathlib import Path

    from sublim.kd.runner import run_experiment

    config = _student(teacher, tmp_path / "whole", "kd_dot")
    whole = torch.load(Path(run_experiment(config)["dir"]) / "last.pt", weights_only=True)
    split = config.replace(outdir=str(tmp_path / "split"))
    assert run_experiment(split, stop_after=lambda e: e == 0)["status"] == "in_progress"
    again = torch.load(Path(run_experiment(split)["dir"]) / "last.pt", weights_only=True)
    for key, value in whole["model"].items():
        assert torch.equal(again["model"][key], value), key


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--optimizer", "adamw"], "--optimizer: invalid value 'adamw'; kd_dot (DOT) is SGD"),
        (["--method-params", '{"delta": 1.5}'], "delta: invalid value 1.5"),
        (["--schedule", "onecycle"], "--schedule: invalid value 'onecycle'; kd_dot (DOT) keeps"),
        (["--momentum", "0.95"], "--method-params delta: invalid value 0.075; DOT's momenta"),
    ],
)
def test_kd_dot_bad_input_is_one_line(tmp_path, capsys, extra, message) -> None:
    from sublim.cli.main import main

    args = ["kd", "distill", "--method", "kd_dot", "--teacher", "resnet8", "--student", "resnet8"]
    args += ["--dataset", "mnist", "--outdir", str(tmp_path), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not any(tmp_path.iterdir())
