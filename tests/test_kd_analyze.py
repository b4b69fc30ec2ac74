"""`sublim kd analyze`: layer quality of a tiny trained experiment on the bundled MNIST, cached
by the model's identity and the settings; CKA against a teacher; one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kd_tiny import SMALL, tiny

from sublim.cli.main import main
from sublim.kd.analyze import CSV_NAME, KEY_NAME, Settings, analyze, find_target, read_rows
from sublim.kd.runner import run_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("analyze")
    return Path(run_experiment(tiny(out))["dir"])


def test_analyze_writes_a_row_per_layer_and_reuses_it(trained: Path) -> None:
    target = find_target(trained)
    assert target.identity.startswith("config:") and target.data.train_limit == 200
    first = analyze(target, SMALL)
    assert not first.cached
    text = (trained / CSV_NAME).read_text()
    header = text.splitlines()[0].split(",")
    assert header[:10] == ["index", "name", "shape", "rel_depth", "model", "dataset"] + list("sieq")
    for col in ("sqrt_ie", "i_corrected", "pca90", "pca95", "twonn", "cos_intra", "cos_inter"):
        assert col in header
    assert {"n_a", "n_b", "seed"} <= set(header)
    rows = read_rows(text)
    assert [r["index"] for r in rows] == list(range(5))  # resnet8's generalized layers
    assert rows[0]["rel_depth"] == 0.0 and rows[-1]["rel_depth"] == 1.0
    assert rows[-1]["name"] == "flatten" and rows[0]["shape"] == "16x32x32"
    assert all(r["n_a"] == 80 and r["seed"] == 0 for r in rows)  # 8 per class x 10 classes
    assert (trained / "layer_quality.png").stat().st_size > 10_000
    mtime = (trained / CSV_NAME).stat().st_mtime_ns
    again = analyze(find_target(trained / "best.pt"), SMALL)  # same model, same key
    assert again.cached and (trained / CSV_NAME).stat().st_mtime_ns == mtime
    assert [r["q"] for r in again.rows] == [r["q"] for r in rows]
    other = analyze(target, Settings(per_class_a=8, per_class_b=8, seed=1))
    assert not other.cached and json.loads((trained / KEY_NAME).read_text())["key"]["seed"] == 1
    assert [r["q"] for r in other.rows] != [r["q"] for r in rows]


def test_cli_analyze_against_a_teacher_and_bad_input(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def sublim(*args: str) -> tuple[int, str, str]:
        code = main(["kd", "analyze", *args])
        out, err = capsys.readouterr()
        return code, out, err

    small = ["--per-class-a", "6", "--per-class-b", "6", "--cka-samples", "40"]
    code, out, err = sublim(str(trained), "--against", str(trained), *small)
    assert code == 0, err
    assert "top 4 by Q" in out and "0->0" in out  # a model is most like itself
    lines = (trained / "cka_resnet8.csv").read_text().splitlines()
    assert lines[0] == "student_index,student_name,teacher_index,teacher_name,cka,n,seed"
    assert len(lines) == 1 + 5 * 5
    diagonal = [float(x.split(",")[4]) for x in lines[1:] if x.split(",")[0] == x.split(",")[2]]
    assert all(abs(v - 1) < 1e-5 for v in diagonal)
    assert (trained / "cka_resnet8.png").stat().st_size > 5_000
    unfinished = tmp_path / "u"
    unfinished.mkdir()
    (unfinished / "config.json").write_text(json.dumps({"model": "resnet8", "dataset": "mnist"}))
    (unfinished / "status.json").write_text(json.dumps({"status": "in_progress", "epoch": 1}))
    lone = tmp_path / "w.pt"
    lone.write_bytes((trained / "best.pt").read_bytes())
    for args, words in (
        ([str(tmp_path / "nowhere")], "no such experiment directory or checkpoint file"),
        ([str(unfinished)], "the experiment is in_progress"),
        ([str(lone)], "--dataset: invalid value None"),
        ([str(trained), "--per-class-a", "x"], "--per-class-a: invalid value 'x'"),
        ([str(trained), "--against", str(tmp_path / "nowhere")], "--against: invalid value"),
    ):
        code, _, err = sublim(*args)
        assert code == 2 and words in err, err
        assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in unfinished.iterdir()) == ["config.json", "status.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u", "w.pt"]
