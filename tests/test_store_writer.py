"""RunStore writes the reference layout, widens headers, replays journals, validates --outdir."""

from __future__ import annotations

import json
import os
import stat

import pytest

from sublim.errors import StoreError
from sublim.records import RunRecord
from sublim.store import (
    LAYER_METRICS_COLUMNS,
    PERTURBATION_COLUMNS,
    RUNS_COLUMNS,
    RunStore,
    check_writable,
    journal,
    read_header,
    read_rows,
)
from sublim.store.csvio import append_at, atomic_write_bytes

SEED_FILES = ("runs.csv", "layer_metrics.csv", "perturbations.csv")
GLOBAL_FILES = ("runs_all_seeds.csv", "layer_metrics_all_seeds.csv", "perturbations_all_seeds.csv")


def make_record(
    run_id: str, seed: int, n_metrics: int = 3, n_perturb: int = 0, **extra
) -> RunRecord:
    """A small synthetic record: `n_metrics` layer rows, `n_perturb` perturbation rows."""
    run = {"run_id": run_id, "seed": seed, "sweep_name": "t", "run_label": "L", "m": 3, **extra}
    run["teacher_hidden_dims"] = [256, 256]
    run["student_final_acc"] = 0.123456789012345
    metrics = [
        {"comparison": "teacher_student_init", "layer_name": f"fc{j}", "tensor_kind": "weight",
         "status": "comparable", "cosine": j / 7}
        for j in range(n_metrics)
    ]  # fmt: skip
    perturbations = [{"timing": "before_student_training", "layer_name": f"fc{j}", "std": 0.1}
                     for j in range(n_perturb)]  # fmt: skip
    return RunRecord(seed, run, metrics, perturbations, {"effective_config": {"seed": seed}})


def test_constructor_touches_nothing_and_write_needs_open(tmp_path) -> None:
    store = RunStore(tmp_path / "out", append_global=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(RuntimeError):
        store.write(make_record("r0", 0))
    assert not (tmp_path / "out").exists()


def test_two_seeds_two_runs_reference_layout(tmp_path) -> None:
    out = tmp_path / "out"
    with RunStore(out, append_global=True).open() as store:
        for seed in (0, 42):
            for k in range(2):
                store.write(make_record(f"s{seed}r{k}", seed, n_metrics=3, n_perturb=k))
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([".sublim.lock", "seed_000000", "seed_000042", *GLOBAL_FILES])
    for seed in (0, 42):
        d = out / f"seed_{seed:06d}"
        assert sorted(p.name for p in d.iterdir()) == sorted([*SEED_FILES, "configs.jsonl"])
        assert read_header(d / "runs.csv") == RUNS_COLUMNS
        assert read_header(d / "layer_metrics.csv") == LAYER_METRICS_COLUMNS
        assert read_header(d / "perturbations.csv") == PERTURBATION_COLUMNS
        runs = read_rows(d / "runs.csv")
        assert [r["run_id"] for r in runs] == [f"s{seed}r0", f"s{seed}r1"]
        assert runs[0]["schema_version"] == "1" and runs[0]["seed"] == str(seed)
        assert runs[0]["teacher_hidden_dims"] == "[256,256]"
        assert runs[0]["student_final_acc"] == "0.123456789012"
        assert runs[0]["cos_init_teacher_student_class_head_weight"] == ""
        metrics = read_rows(d / "layer_metrics.csv")
        assert len(metrics) == 6
        assert {
            (m["run_id"], m["seed"], m["sweep_name"], m["schema_version"]) for m in metrics
        } == {
            (f"s{seed}r0", str(seed), "t", "1"),
            (f"s{seed}r1", str(seed), "t", "1"),
        }
        assert [p["run_id"] for p in read_rows(d / "perturbations.csv")] == [f"s{seed}r1"]
        configs = [json.loads(x) for x in (d / "configs.jsonl").read_text().splitlines()]
        assert [c["run_id"] for c in configs] == [f"s{seed}r0", f"s{seed}r1"]
        assert configs[0]["schema_version"] == 1
        assert configs[0]["effective_config"] == {"seed": seed}
    assert [r["run_id"] for r in read_rows(out / "runs_all_seeds.csv")] == [
        "s0r0", "s0r1", "s42r0", "s42r1"
    ]  # fmt: skip
    assert len(read_rows(out / "layer_metrics_all_seeds.csv")) == 12
    assert len(read_rows(out / "perturbations_all_seeds.csv")) == 2
    assert read_header(out / "perturbations_all_seeds.csv") == PERTURBATION_COLUMNS


def test_perturbations_file_created_with_header_and_no_global_by_default(tmp_path) -> None:
    with RunStore(tmp_path).open() as store:
        store.write(make_record("r0", 7, n_perturb=0))
    assert (tmp_path / "seed_000007" / "perturbations.csv").read_bytes().count(b"\n") == 1
    assert not any((tmp_path / name).exists() for name in GLOBAL_FILES)


def test_header_widening_rewrites_and_keeps_old_rows(tmp_path) -> None:
    with RunStore(tmp_path, append_global=True).open() as store:
        store.write(make_record("r0", 1))
        store.write_many([make_record("r1", 1), make_record("r2", 1)])
        store.write(make_record("r3", 1, config_hash="abc", distill_loss=0.5))
        store.write(make_record("r4", 1, distill_loss=0.25))
    for path in (tmp_path / "seed_000001" / "runs.csv", tmp_path / "runs_all_seeds.csv"):
        assert read_header(path) == RUNS_COLUMNS + ["config_hash", "distill_loss"]
        rows = read_rows(path)
        assert [r["run_id"] for r in rows] == ["r0", "r1", "r2", "r3", "r4"]
        assert [r["distill_loss"] for r in rows] == ["", "", "", "0.5", "0.25"]
        assert [r["config_hash"] for r in rows] == ["", "", "", "abc", ""]
        assert rows[0]["student_final_acc"] == "0.123456789012"
        assert rows[0]["teacher_hidden_dims"] == "[256,256]"
        assert all(r["m"] == "3" for r in rows)


def test_existing_header_order_is_kept_when_appending(tmp_path) -> None:
    d = tmp_path / "seed_000000"
    d.mkdir()
    (d / "runs.csv").write_text("run_id,seed,m\nold,0,9")  # hand-written, no final newline
    with RunStore(tmp_path).open() as store:
        store.write(make_record("new", 0))
    text = (d / "runs.csv").read_text()
    assert text.startswith("run_id,seed,m,schema_version,")  # widened: old order first
    rows = read_rows(d / "runs.csv")
    assert [(r["run_id"], r["m"]) for r in rows] == [("old", "9"), ("new", "3")]


def test_journal_left_behind_is_completed_once(tmp_path) -> None:
    with RunStore(tmp_path, append_global=True).open() as store:
        store.write(make_record("r0", 0, n_metrics=4, n_perturb=2))
        # Plan the next run, write its journal, apply only part of it, then "crash".
        changes = store._plan([make_record("r1", 0, n_metrics=5, n_perturb=1, distill_loss=1.0)])
        assert {c.op for c in changes} == {"append", "replace"}  # runs.csv files widen
        atomic_write_bytes(journal.journal_path(tmp_path), journal._encode(changes))
        journal.apply(tmp_path, changes[:2])
        torn = changes[2]
        append_at(tmp_path / torn.path, torn.size_before, torn.data[: len(torn.data) // 2])
    (tmp_path / ".sublim.journal.sublim-tmp").write_bytes(b"{half a journal")
    store = RunStore(tmp_path, append_global=True).open()
    assert store.recovered
    store.close()
    assert not journal.journal_path(tmp_path).exists()
    assert not (tmp_path / ".sublim.journal.sublim-tmp").exists()
    again = RunStore(tmp_path, append_global=True).open()
    assert not again.recovered
    again.write(make_record("r2", 0, n_metrics=1))
    again.close()
    expected = {"r0": (1, 4, 2), "r1": (1, 5, 1), "r2": (1, 1, 0)}
    for files in (SEED_FILES, GLOBAL_FILES):
        paths = [tmp_path / ("seed_000000/" + f if f in SEED_FILES else f) for f in files]
        for run_id, counts in expected.items():
            got = tuple(sum(r["run_id"] == run_id for r in read_rows(p)) for p in paths)
            assert got == counts, (files, run_id)
    lines = (tmp_path / "seed_000000" / "configs.jsonl").read_text().splitlines()
    assert [json.loads(x)["run_id"] for x in lines] == ["r0", "r1", "r2"]


def test_unreadable_journal_is_a_one_line_store_error(tmp_path) -> None:
    journal.journal_path(tmp_path).write_text("not json")
    with pytest.raises(StoreError, match="--outdir") as err:
        RunStore(tmp_path).open()
    assert "\n" not in str(err.value)
    assert RunStore(tmp_path)._lock.held is False


def test_check_writable_accepts_new_nested_path_without_creating_it(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "c"
    check_writable(target)
    check_writable(tmp_path)
    assert not (tmp_path / "a").exists()


def test_check_writable_rejects_a_file_and_a_path_under_a_file(tmp_path) -> None:
    f = tmp_path / "file.txt"
    f.write_text("x")
    for bad in (f, f / "sub" / "dir"):
        with pytest.raises(StoreError, match="--outdir") as err:
            check_writable(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root bypasses directory permissions")
def test_check_writable_rejects_read_only_directory(tmp_path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        for bad in (ro, ro / "new" / "dir"):
            with pytest.raises(StoreError, match="--outdir"):
                check_writable(bad)
        with pytest.raises(StoreError, match="--outdir"):
            RunStore(ro / "new").open()
    finally:
        ro.chmod(stat.S_IRWXU)


def test_check_writable_reports_unwritable_directory_even_as_root(tmp_path, monkeypatch) -> None:
    # Root bypasses permission bits, so emulate what os.access reports to a normal user.
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if p == ro else real_access(p, mode))
    with pytest.raises(StoreError, match="directory is not writable"):
        check_writable(ro)
    with pytest.raises(StoreError, match=f"cannot create it in {ro}"):
        check_writable(ro / "new" / "dir")


def test_disk_error_mid_write_closes_store_and_next_open_completes_run(tmp_path, monkeypatch):
    import errno

    store = RunStore(tmp_path).open()
    store.write(make_record("r0", 0))
    real_append = journal.append_at
    calls = []

    def failing_append(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        real_append(*args)

    monkeypatch.setattr(journal, "append_at", failing_append)
    with pytest.raises(StoreError, match="No space left on device") as err:
        store.write(make_record("r1", 0, n_metrics=2))
    assert "--outdir" in str(err.value) and "\n" not in str(err.value)
    assert not store.is_open and journal.journal_path(tmp_path).exists()
    monkeypatch.setattr(journal, "append_at", real_append)
    with RunStore(tmp_path).open() as again:
        assert again.recovered
    d = tmp_path / "seed_000000"
    assert [r["run_id"] for r in read_rows(d / "runs.csv")] == ["r0", "r1"]
    assert [r["run_id"] for r in read_rows(d / "layer_metrics.csv")] == ["r0"] * 3 + ["r1"] * 2


def test_record_without_run_id_is_rejected_before_any_write(tmp_path) -> None:
    with RunStore(tmp_path).open() as store:
        with pytest.raises(ValueError, match="run_id"):
            store.write(RunRecord(0, {"seed": 0}))
        assert store.is_open
    assert not (tmp_path / "seed_000000").exists()
