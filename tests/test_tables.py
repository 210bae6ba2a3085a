"""dse.tables and dse.figures on small SQLite stores filled with known rows through dse.store's ORM."""

from __future__ import annotations

import itertools
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from dse.store import DeploymentRow, EpochRow, Store, TrialRow
from dse.tables import Options, TablesError, build_tables, generate, load_paper_tables, read_store
from dse.tables.__main__ import main
from dse.tables.paper import DEFAULT_PAPER_DIR, paper_flags

_ids = itertools.count()

# the registry facts of each model used below (names, arch, layout) come from dse.models
from dse.models import spec_from_name  # noqa: E402


def add_trial(store: Store, model: str, *, test_acc: float | None = None, seed: int = 0, **kw) -> int:
    """Insert one trial with plausible defaults; returns its id."""
    spec = spec_from_name(model, num_classes=100 if kw.get("dataset") == "cifar100" else 10)
    fields = dict(
        study="tables-smoke", identity=f"id{next(_ids)}", attempts=1, model_name=spec.name, arch=spec.arch,
        stage_depths="-".join(map(str, spec.stage_depths)) if spec.stage_depths else None, width=spec.width,
        dropout=spec.dropout, activation=spec.activation, num_classes=spec.num_classes,
        optimizer="sgd_nesterov",
        lr=0.01, schedule="step", dataset="cifar10", data_source="imagefolder:/data/cifar10-jpg",
        data_fraction=1.0, train_images=45_000, epochs=200, batch_size=128, seed=seed, status="complete",
        epochs_done=200, best_epoch=180, best_val_acc=None if test_acc is None else test_acc + 0.5,
        test_acc=test_acc, params=1000, macs=10_000, checkpoint_bytes=123_456, sec_per_epoch=3.0,
        device="cpu", precision="fp32", torch_version="2.14.1", git_commit="abc123", host="h",
        config_json="{}")
    fields.update(kw)
    with store.session() as s:
        row = TrialRow(**fields)
        s.add(row)
        s.flush()
        return int(row.id)


@pytest.fixture()
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'dse.db'}")


@pytest.fixture(scope="module")
def paper() -> pd.DataFrame:
    return load_paper_tables()


def tables_of(store: Store, paper: pd.DataFrame, studies=None):
    data = read_store(store.url, studies)
    return build_tables(paper, data.trials, data.deployments)


def row(tables, table: int, i: int):
    return tables[table].rows.iloc[i]


# ------------------------------------------------------------------------------------------ aggregation


def test_mean_std_n_and_difference_over_three_seeds(store, paper):
    for seed, acc in enumerate((80.0, 81.0, 82.5)):
        add_trial(store, "squeezenet_1_0", test_acc=acc, seed=seed)
    t = tables_of(store, paper)
    r = row(t, 1, 0)  # SqueezeNet-v1.0 (baseline), paper 79.59
    assert r["status"] == "ok" and r["n"] == 3
    assert r["acc_mean"] == pytest.approx(243.5 / 3)
    assert r["acc_std"] == pytest.approx(math.sqrt(((80 - 243.5 / 3) ** 2 + (81 - 243.5 / 3) ** 2
                                                    + (82.5 - 243.5 / 3) ** 2) / 2))
    from dse.tables.render import to_markdown
    md = to_markdown(t[1])
    assert "81.17 ± 1.26 (n=3)" in md and "+1.58" in md
    # the same architecture in Table 7 ("Squeezed CNN") gets the same trials
    assert row(t, 7, 0)["acc_mean"] == pytest.approx(243.5 / 3)
    assert row(t, 1, 1)["status"] == "not run"


def test_trials_with_the_default_lr_and_no_subset_match(store, paper):
    """lr=None (the optimizer's default) and train_images=None are normal sweep rows: still matched."""
    for seed, acc in enumerate((70.0, 72.0)):
        add_trial(store, "sqnxt_23_1x", test_acc=acc, seed=seed, lr=None, train_images=None)
    r = row(tables_of(store, paper), 1, 2)  # SqueezeNext-23-1x
    assert r["status"] == "ok" and r["n"] == 2 and r["acc_mean"] == pytest.approx(71.0)


def test_largest_budget_wins_and_is_named(store, paper):
    add_trial(store, "sqnxt_23_1x", test_acc=50.0, epochs=10)
    add_trial(store, "sqnxt_23_1x", test_acc=52.0, epochs=10, seed=1)
    add_trial(store, "sqnxt_23_1x", test_acc=70.0, data_fraction=0.1, train_images=4_500)
    add_trial(store, "sqnxt_23_1x", test_acc=88.0)
    add_trial(store, "sqnxt_23_1x", test_acc=90.0, seed=1)
    t = tables_of(store, paper)
    r = row(t, 1, 2)  # SqueezeNext-23-1x (baseline)
    assert (r["acc_mean"], r["n"], r["epochs"], r["data_fraction"], r["n_budgets"]) == (89.0, 2, 200, 1.0, 3)
    assert any("largest of 3 budgets" in n for n in t[1].notes[2])
    from dse.tables.render import to_markdown
    assert "200 ep x 45,000 img (100.0 % of the training pool), imagefolder:cifar10-jpg" in to_markdown(t[1])


def test_config_chosen_by_validation_not_test(store, paper):
    add_trial(store, "sqnxt_23_2x", test_acc=84.0, best_val_acc=85.0, optimizer="adam", lr=0.001)
    add_trial(store, "sqnxt_23_2x", test_acc=83.0, best_val_acc=88.0)
    r = row(tables_of(store, paper), 1, 3)
    assert (r["acc_mean"], r["n"], r["n_configs"]) == (83.0, 1, 2)
    assert "optimizer=sgd_nesterov" in r["config"]


def test_table4_matches_dropout_table6_optimizer_and_dataset(store, paper):
    add_trial(store, "shallow_sqnxt_06_0_2x", test_acc=80.0, dropout=0.1)
    add_trial(store, "shallow_sqnxt_06_0_2x", test_acc=82.0, dropout=0.3)
    add_trial(store, "shallow_sqnxt_09_0_5x", test_acc=50.0, optimizer="adam", dataset="cifar100")
    t = tables_of(store, paper)
    assert [row(t, 4, i)["acc_mean"] for i in (0, 2)] == [80.0, 82.0]
    assert [row(t, 4, i)["status"] for i in (1, 3, 4)] == ["not run"] * 3
    assert row(t, 1, 8)["status"] == "ok"  # Table 1's 06-0.2x: any dropout (best by validation)
    assert row(t, 6, 1)["acc_mean"] == 50.0 and row(t, 6, 1)["optimizer"] == "adam"
    assert row(t, 6, 2)["status"] == "not run"  # adamax
    assert row(t, 5, 4)["status"] == "not run"  # 09-0.5x on CIFAR-10: the CIFAR-100 trial does not count


def test_failed_and_pending_rows(store, paper):
    reason = "DatasetNotFoundError: CIFAR-100 not found under /data/cifar100 and downloads are disabled"
    add_trial(store, "shallow_sqnxt_09_0_5x", status="failed", fail_reason=reason, optimizer="rprop",
              dataset="cifar100")
    add_trial(store, "shallow_sqnxt_09_0_5x", status="running", optimizer="rmsprop", dataset="cifar100")
    t = tables_of(store, paper)
    assert row(t, 6, 8)["status_text"] == reason  # whole: the cell points to a footnote instead of cutting it
    from dse.tables.render import to_markdown
    md = to_markdown(t[6])
    assert "| failed [" in md and f". ours: failed: {reason}\n" in md
    assert row(t, 6, 7)["status"] == "pending" and "running 1" in row(t, 6, 7)["status_text"]


def test_not_run_rows_show_the_exact_command_and_computed_size(tmp_path, store, paper):
    res = generate(Options(db_url=store.url, out_dir=tmp_path / "out", figures=False))
    gpu = "python -m dse.sweep experiment=cpu_gpu budget=paper trainer=gpu"  # dse/experiments/cpu_gpu.yaml's rows
    for n, tab in res.tables.items():
        assert set(tab.rows["status"]) <= {"not run", "gpu budget"}
        md = (tmp_path / "out" / "tables" / f"table{n}.md").read_text()
        if (tab.rows["status"] == "not run").any():
            assert f"not run: `python -m dse.sweep experiment=table{n}`" in md
        if (tab.rows["status"] == "gpu budget").any():
            assert gpu in md
    # Table 3: its light rows are the default CPU study's (not run yet), its widest need the GPU budget
    assert set(res.tables[3].rows["status"]) == {"not run", "gpu budget"}
    r = row(res.tables, 1, 7)  # 06-0.4x: our size computed from the architecture
    assert r["ours_mb_source"] == "computed" and 0.1 < r["ours_mb"] < 0.5 and r["params"] > 0


def test_int8_size_and_table7_latencies_from_deployments(store, paper):
    tid = add_trial(store, "shallow_sqnxt_09_0_5x", test_acc=87.0)
    with store.session() as s:
        s.add(DeploymentRow(trial_id=tid, model_name="shallow_sqnxt_09_0_5x", format="onnx",
                            file_bytes=500_000, p50_ms=1.0, p99_ms=2.0, host="h"))
        s.add(DeploymentRow(trial_id=tid, model_name="shallow_sqnxt_09_0_5x", format="onnx_int8",
                            file_bytes=30_000, p50_ms=0.5, p99_ms=0.9, host="h"))
    t = tables_of(store, paper)
    r = row(t, 7, 3)
    lat = (r["onnx_p50_ms"], r["onnx_p99_ms"], r["onnx_int8_p50_ms"], r["onnx_int8_p99_ms"])
    assert lat == (1, 2, .5, .9)
    assert r["int8_bytes"] == 30_000 and row(t, 5, 4)["int8_bytes"] == 30_000
    from dse.tables.render import to_markdown
    md = to_markdown(t[7])
    assert "1.00 / 2.00" in md and "0.50 / 0.90" in md and "0.030" in md


def test_study_filter(store, paper):
    add_trial(store, "squeezenet_1_1", test_acc=70.0, study="a-smoke")
    add_trial(store, "squeezenet_1_1", test_acc=90.0, study="b-smoke")
    assert row(tables_of(store, paper, ("a-smoke",)), 1, 1)["acc_mean"] == 70.0
    assert row(tables_of(store, paper), 1, 1)["n"] == 2
    with pytest.raises(TablesError, match="unknown study 'c'"):
        read_store(store.url, ("c",))


# ------------------------------------------------------------------------------------------------ flags


def _flags(paper, ours=None):
    return paper_flags(paper, ours or {})


def _flag_rows(flags, paper, text):
    return {(t, r) for (t, r), fs in flags.items() if any(text in f for f in fs)}


def test_flags_table6_repeats_table3_and_is_implausible(paper):
    f = _flags(paper)
    t6 = paper[paper["table"] == 6]
    repeated = {(6, int(r)) for r, a in zip(t6["row"], t6["accuracy_pct"], strict=True)
                if a in (77.9, 87.3, 89.0, 84.6, 88.1, 87.7, 89.4)}
    assert len(repeated) == 7
    assert _flag_rows(f, paper, "repeats a CIFAR-10 accuracy") == repeated
    assert repeated <= _flag_rows(f, paper, "implausible for CIFAR-100")
    assert "Table 3's 06-2.0x" in " ".join(f[(6, 9)])  # 89.4 again


def _row_of(paper, table: int, model: str) -> int:
    return int(paper[(paper["table"] == table) & (paper["model"] == model)]["row"].iloc[0])


def test_flags_duplicate_row_width_scaling_typo_and_size_ratio(paper):
    ours = {("shallow_sqnxt_06_0_2x", "cifar10"): 0.107, ("shallow_sqnxt_06_0_4x", "cifar10"): 0.238,
            ("shallow_sqnxt_21_0_2x", "cifar10"): 0.362}
    f = _flags(paper, ours)
    row_08 = _row_of(paper, 2, "Shallow SqueezeNext-08-2x")
    assert any("same numbers as SqueezeNet-v1.1 in Table 1" in x for x in f[(2, row_08)])
    t1_02 = _row_of(paper, 1, "Shallow SqueezeNext-06-0.2x")
    width = [x for x in f[(1, t1_02)] if "size does not grow with width" in x and "06-0.4x" in x]
    assert width and "ours: 0.107 vs 0.238 MB" in width[0]
    assert any("1.8.14" in x for x in f[(5, 1)])
    assert any("5.01x our float32 checkpoint" in x for x in f[(1, 5)])  # 1.814 / 0.362


def test_flags_follow_the_data_not_row_numbers(tmp_path, paper):
    d = tmp_path / "paper"
    shutil.copytree(DEFAULT_PAPER_DIR, d)
    t6 = d / "table6_cifar100_optimizers.csv"
    t6.write_text(t6.read_text().replace(",89.4,", ",40.0,"))
    edited = load_paper_tables(d)
    f = _flags(edited)
    assert not any("repeats" in x or "implausible" in x for x in f[(6, 9)])
    assert any("repeats" in x for x in f[(6, 4)])


# ------------------------------------------------------------------------------ files, figures, report, CLI


def _with_curves(store: Store) -> None:
    for number, (model, acc) in enumerate((("squeezenet_1_0", 79.0), ("sqnxt_23_1x", 87.0),
                                           ("shallow_sqnxt_14_1_5x", 91.0), ("shallow_sqnxt_06_0_4x", 82.0))):
        tid = add_trial(store, model, test_acc=acc, epochs=5, optuna_trial_number=number)
        with store.session() as s:
            for e in range(1, 6):
                s.add(EpochRow(trial_id=tid, epoch=e, train_acc=acc * e / 5 + 5, val_acc=acc * e / 5))


def test_formats_figures_and_report_written(tmp_path, store):
    _with_curves(store)
    out = tmp_path / "out"
    res = generate(Options(db_url=store.url, out_dir=out, formats=("md", "csv", "tex")))
    for n in range(1, 8):
        for fmt in ("md", "csv", "tex"):
            assert (out / "tables" / f"table{n}.{fmt}").stat().st_size > 0
    csv = pd.read_csv(out / "tables" / "table1.csv")
    assert csv.loc[0, "acc_mean_pct"] == 79.0 and csv.loc[0, "paper_acc_pct"] == 79.59
    assert csv.loc[0, "acc_diff_pct"] == pytest.approx(79.0 - 79.59)
    # Table 1's baselines are GPU-budget rows (dse/experiments/cpu_gpu.yaml): their command is that study's
    assert csv.loc[1, "run_command"] == "python -m dse.sweep experiment=cpu_gpu budget=paper trainer=gpu"
    assert r"\begin{tabular}" in (out / "tables" / "table1.tex").read_text()
    for name in ("figure9.png", "tradeoff.png", "target.png"):
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    report = (out / "report.md").read_text()
    for link in [f"tables/table{n}.{fmt}" for n in range(1, 8) for fmt in ("md", "csv", "tex")] + [
            "figures/figure9.png", "figures/tradeoff.png", "figures/target.png"]:
        assert f"]({link})" in report and (out / link).exists()
    assert "tables-smoke" in report and "`abc123`" in report and "`2.14.1`" in report and "`cpu`" in report
    assert "| tables-smoke | 4 | 4 |" in report  # trial counts by status
    assert "peak RAM and int8 flash for 0 of 4 trials; latency of the untrained network for 0" in report
    assert res.files and all(p.exists() for p in res.files)


def test_figures_on_an_empty_store(tmp_path, store):
    out = tmp_path / "out"
    generate(Options(db_url=store.url, out_dir=out))
    assert (out / "figures" / "figure9.png").stat().st_size > 5_000
    assert "The store has no trials" in (out / "report.md").read_text()


def test_every_format_on_a_store_without_a_finished_paper_row(tmp_path, store):
    """A store holding only a sampled study's queued trial (no paper row has a result) still writes every format."""
    add_trial(store, "shallow_sqnxt_06_0_2x", study="dse-quick", status="queued", test_acc=None)
    out = tmp_path / "out"
    generate(Options(db_url=store.url, out_dir=out, formats=("md", "csv", "tex"), figures=False))
    frame = pd.read_csv(out / "tables" / "table3.csv")
    assert frame["test_images"].isna().all() and len(frame) == 13
    from dse.models import model_facts

    facts = [model_facts(spec_from_name(m)) for m in frame["model_name"]]  # from the architecture, run or not
    assert list(frame["flash_bytes"]) == [f.flash_bytes for f in facts]
    assert list(frame["ram_bytes_int8"]) == [f.ram_bytes_int8 for f in facts]


def test_one_pareto_front_on_validation_accuracy_in_figure_and_deploy():
    """The figure rings the same trials ``dse.deploy --pareto`` deploys: validation accuracy up, size down, even
    where the test accuracy (what the figure plots) would give another front."""
    from dse.deploy import select as sel
    from dse.figures import ours_points

    rows = [  # id, val acc, test acc, bytes
        (1, 80.0, 85.0, 100_000), (2, 85.0, 80.0, 200_000), (3, 70.0, 90.0, 150_000), (4, 90.0, 70.0, 900_000),
        (5, 84.0, 99.0, 300_000)]  # 3 and 5 would be on a test-accuracy front; on validation they are dominated
    trials = pd.DataFrame([dict(id=i, study="s", optuna_trial_number=i, status="complete", dataset="cifar10",
                                model_name="shallow_sqnxt_06_0_4x", arch="shallow_sqnxt", best_val_acc=v, test_acc=t,
                                checkpoint_bytes=b, macs=1e6, sec_per_epoch=1.0, train_images=1000, device="cpu",
                                precision="fp32", checkpoint_path="x.pt", epochs=2, data_fraction=0.02,
                                test_images=1000) for i, v, t, b in rows])
    figure = sorted(int(i) for i in ours_points(trials).query("on_front")["id"])
    deploy = sorted(c.trial_id for c in sel.pareto_front(sel.candidates(trials)))
    assert figure == deploy == [1, 2, 4]


def test_seconds_per_full_epoch_from_a_subset_with_device_and_precision(tmp_path, store, paper):
    # 2.0 s for a 1,000-image epoch = 500 img/s -> 100 s for the paper's 50,000-image epoch
    add_trial(store, "squeezenet_1_0", test_acc=60.0, sec_per_epoch=2.0, train_images=1000, data_fraction=0.02,
              device="cpu", precision="bf16", optuna_trial_number=7)
    t = tables_of(store, paper)
    assert row(t, 1, 0)["sec_full_mean"] == pytest.approx(100.0)
    from dse.tables.render import to_csv_frame, to_markdown
    md = to_markdown(t[1])
    assert "s/epoch (50k img) ours (device precision)" in md and "| 100.0 cpu bf16 |" in md
    csv = to_csv_frame(t[1])
    assert csv.loc[0, "ours_sec_per_50k_epoch"] == pytest.approx(100.0)
    assert csv.loc[0, "ours_sec_per_trial_epoch"] == pytest.approx(2.0)
    assert csv.loc[0, "trials"] == "tables-smoke t7"  # the trial's name: Optuna's number, as the dashboard shows it


def test_near_chance_rows_marked_and_budget_atop_the_report(tmp_path, store, paper):
    add_trial(store, "squeezenet_1_0", test_acc=14.9, epochs=2, train_images=1000, data_fraction=0.020202020202020204,
              test_images=1000)  # CIFAR-10: 10 % chance + 5 points
    add_trial(store, "squeezenet_1_1", test_acc=15.1, epochs=2, train_images=1000, data_fraction=0.020202020202020204,
              test_images=1000)
    add_trial(store, "shallow_sqnxt_09_0_5x", test_acc=5.5, optimizer="adam", dataset="cifar100", epochs=2,
              train_images=1000, data_fraction=0.020202020202020204, test_images=1000)  # 1 % chance
    out = tmp_path / "out"
    res = generate(Options(db_url=store.url, out_dir=out, figures=False, formats=("md", "csv")))
    md1, md6 = (out / "tables" / "table1.md").read_text(), (out / "tables" / "table6.md").read_text()
    assert "| 14.90 ≈ chance [" in md1 and "| 15.10 |" in md1 and "n=1" not in md1  # n only when above 1
    # the budget once, above the table; at 2 epochs no point-by-point difference to the paper's 200, but ranks
    assert md1.count("2 ep x 1,000 img") == 1 and "Budget (every row): 2 ep x 1,000 img" in md1
    assert "| Rank ours/paper |" in md1 and "Δ acc" not in md1 and "are not compared point by point" in md1
    assert "≈ chance [" in md6 and "**1 of 9 rows are ≈ chance**" in md1
    assert pd.read_csv(out / "tables" / "table1.csv")["near_chance"].tolist()[:2] == [True, False]
    report = (out / "report.md").read_text()
    assert report.index("## Budget") < report.index("## Tables")
    assert ("| tables-smoke | 3 | 2 | 1,000 (2.0 % of the training pool) | 1,000 | imagefolder:cifar10-jpg | "
            "cpu fp32 |") in report
    assert "**3 rows are ≈ chance**" in report and "0.0202020" not in report + md1
    assert "2.0 % of the training pool" in md1
    assert res.tables[1].rows["status"].tolist().count("ok") == 2


def test_gpu_budget_rows_come_from_the_config(tmp_path, store, paper):
    from dse.tables import gpu_rows
    from dse.tables.render import to_markdown

    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "tables.yaml").write_text("study:\n  experiment: tables\n")
    assert not gpu_rows(tmp_path).mask(paper).any()  # nothing declared: nothing is a GPU row
    # a list of whole models, per table command
    (tmp_path / "conf" / "budget").mkdir(parents=True)
    (tmp_path / "conf" / "budget" / "quick.yaml").write_text("search:\n  gpu_only_models: [sqnxt_23_2x]\n")
    data = read_store(store.url)
    t = build_tables(paper, data.trials, data.deployments, gpu_rows(tmp_path))
    assert row(t, 1, 3)["status"] == "gpu budget" and row(t, 1, 0)["status"] == "not run"
    md = to_markdown(t[1])
    assert "| GPU budget: `python -m dse.sweep experiment=table1 budget=paper trainer=gpu` |" in md
    assert "| not run: `python -m dse.sweep experiment=table1` |" in md
    # the GPU experiment's points, row by row in any table: same model, dropout, optimizer and dataset
    (tmp_path / "experiments" / "cpu_gpu.yaml").write_text(
        "search:\n  blocks:\n    table4:\n      points:\n"
        "        - {model.name: shallow_sqnxt_06_0_2x, model.dropout: 0.1}\n"
        "    table6:\n      points:\n"
        "        - {model.name: shallow_sqnxt_09_0_5x, optimizer.name: adam, data.dataset: cifar100}\n")
    add_trial(store, "shallow_sqnxt_09_0_5x", test_acc=40.0, optimizer="rprop", dataset="cifar100")
    data = read_store(store.url)
    t = build_tables(paper, data.trials, data.deployments, gpu_rows(tmp_path))
    st4 = dict(zip(t[4].rows["dropout"], t[4].rows["status"], strict=True))
    assert st4[0.1] == "gpu budget" and st4[0.2] == "not run"
    assert row(t, 1, 8)["model_name"] == "shallow_sqnxt_06_0_2x" and row(t, 1, 8)["status"] == "not run"  # dropout
    st6 = dict(zip(t[6].rows["optimizer"], t[6].rows["status"], strict=True))
    assert st6["adam"] == "gpu budget" and st6["rprop"] == "ok" and st6["adamax"] == "not run"
    assert "GPU budget: `python -m dse.sweep experiment=cpu_gpu budget=paper trainer=gpu`" in to_markdown(t[6])


def test_epochs_csv_has_every_epoch_with_optuna_numbers(tmp_path, store, capsys):
    _with_curves(store)
    path = tmp_path / "epochs.csv"
    assert main(["--db", store.url, "--out", str(tmp_path / "out"), "--no-figures", "--epochs-csv", str(path)]) == 0
    assert "20 epoch rows" in capsys.readouterr().out
    ep = pd.read_csv(path)
    assert len(ep) == 20 and list(ep.columns[:6]) == ["study", "optuna_trial_number", "model_name", "dataset",
                                                       "seed", "trial_id"]
    assert {"epoch", "train_acc", "val_acc", "train_seconds"} <= set(ep.columns)
    assert list(ep.columns[-5:]) == ["flash_bytes", "ram_bytes_int8", "ram_bytes_fp32", "latency_p50_ms",
                                     "latency_p99_ms"]  # the trial's target facts on each of its epochs
    assert ep.groupby("model_name")["epoch"].apply(list).map(lambda e: e == [1, 2, 3, 4, 5]).all()
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(set(ep["optuna_trial_number"])) == [0, 1, 2, 3] and ",0.0," not in path.read_text()


def test_cli_missing_store_is_one_line(tmp_path, capsys):
    rc = main(["--db", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: no results store at") and err.count("\n") == 1
    assert not (tmp_path / "nope.db").exists()  # reading never creates a store


def test_cli_bad_format_and_unknown_study(tmp_path, store, capsys):
    assert main(["--db", store.url, "--format", "md,xls", "--out", str(tmp_path)]) == 1
    assert "unknown format xls" in capsys.readouterr().err
    assert main(["--db", store.url, "--study", "nope", "--out", str(tmp_path)]) == 1
    assert "unknown study 'nope'" in capsys.readouterr().err


def test_cli_on_an_empty_store_explains(tmp_path, capsys):
    db = tmp_path / "empty.db"
    db.touch()  # a file with no dse tables at all
    rc = main(["--db", f"sqlite:///{db}", "--out", str(tmp_path / "out"), "--no-figures"])
    out = capsys.readouterr().out
    assert rc == 0 and "the store has no trials" in out and "Table 6: 0/10 rows" in out
    assert (tmp_path / "out" / "tables" / "table6.md").exists()


def test_figure_titles_carry_the_budget():
    from dse.figures import budget_title

    one = pd.DataFrame([dict(epochs=2, train_images=15_000, data_fraction=0.3030303, test_images=2000)] * 3)
    assert budget_title(one) == "budget: 2 ep x 15,000 train img (30.3 % of the pool), 2,000 test img"
    two = pd.concat([one, one.assign(epochs=200, train_images=45_000, data_fraction=1.0, test_images=10_000)])
    assert budget_title(two).startswith("budgets: 2 ep x 15,000") and "; 200 ep x 45,000 train img (100.0 %" in \
        budget_title(two)
    assert budget_title(one.iloc[:0]) == "budget: no complete trial"


def test_the_remedy_is_the_command_that_completes_that_study(tmp_path, store, paper):
    """A row whose trial a study left queued needs that study's command again, not a new study of the table; at
    the paper's budget the difference to the paper is shown, and the correlation needs three rows."""
    add_trial(store, "squeezenet_1_0", test_acc=None, status="queued", epochs_done=0)
    add_trial(store, "squeezenet_1_1", test_acc=70.0)
    out = tmp_path / "out"
    generate(Options(db_url=store.url, out_dir=out, figures=False, formats=("md",)))
    md1 = (out / "tables" / "table1.md").read_text()
    assert "1 of 9 rows have trials queued, running or interrupted (study tables-smoke): run the command" in md1
    assert "| Δ acc |" in md1 and "Rank ours/paper" not in md1 and "Spearman" not in md1


def test_figure9_leaves_out_the_panels_of_models_not_run(tmp_path, store):
    """Only the Shallow SqueezeNext has a trial: one panel (5 in x 120 dpi wide), the absent baselines named in
    the title, not two empty panels."""
    import matplotlib.image

    from dse.figures import figure9

    tid = add_trial(store, "shallow_sqnxt_06_0_4x", test_acc=60.0, epochs=2, optuna_trial_number=0)
    with store.session() as s:
        for e in (1, 2):
            s.add(EpochRow(trial_id=tid, epoch=e, train_acc=50.0 + e, val_acc=50.0 + e))
    trials = store.trials()
    path = figure9(trials, lambda ids: store.epochs(trial_ids=ids), tmp_path / "f9.png")
    assert matplotlib.image.imread(path).shape[1] == 5 * 120


def test_a_sampled_study_gets_its_own_table_of_trials_and_pareto_set(tmp_path, store, paper):
    """Trials that match no paper row (a sampled search) are listed in their study's table, every status, with the
    Pareto set that dse.deploy --pareto ships; a paper study gets no such table."""
    from dse.deploy import select as sel

    add_trial(store, "shallow_sqnxt_06_0_2x", test_acc=70.0, study="table3-smoke")  # a paper row: no study table
    sampled = dict(study="dse-quick", epochs=2, epochs_done=2, train_images=5_000, test_images=1_000,
                   checkpoint_path="dse-quick/t0/best.pt")
    ids = {}
    for n, (model, val, size) in enumerate([("shallow_sqnxt_10_0_325x", 60.0, 150_000),
                                            ("shallow_sqnxt_14_1_05x", 72.0, 900_000),
                                            ("shallow_sqnxt_10_0_45x", 58.0, 300_000)]):  # dominated by the first
        ids[model] = add_trial(store, model, test_acc=val - 1, best_val_acc=val, checkpoint_bytes=size,
                               optuna_trial_number=n, **sampled)
    add_trial(store, "shallow_sqnxt_12_0_8x", test_acc=None, status="queued", optuna_trial_number=3, **sampled)
    add_trial(store, "shallow_sqnxt_12_0_6x", test_acc=None, status="failed", fail_reason="out of memory",
              optuna_trial_number=4, **sampled)
    out = tmp_path / "out"
    res = generate(Options(db_url=store.url, out_dir=out, formats=("md", "csv", "tex"), figures=False))
    assert list(res.studies) == ["dse-quick"]
    frame = pd.read_csv(out / "tables" / "study_dse-quick.csv")
    assert list(frame["trial"]) == ["t1", "t0", "t2", "t3", "t4"]  # best validation first, then the unfinished
    assert list(frame["status"]) == ["complete"] * 3 + ["queued", "failed"]
    assert sorted(frame.loc[frame["pareto"], "trial"]) == ["t0", "t1"]
    data = read_store(store.url, ("dse-quick",))
    shipped = sorted(c.trial_id for c in sel.pareto_front(sel.candidates(data.trials)))
    assert shipped == sorted([ids["shallow_sqnxt_10_0_325x"], ids["shallow_sqnxt_14_1_05x"]])
    md = (out / "tables" / "study_dse-quick.md").read_text()
    assert md.count("2 epochs, 5,000 training and 1,000 test images") == 1  # the budget once, not per row
    assert "Shallow SqueezeNext-10-0.325x" in md and "failed: out of memory" in md and md.count("★") == 2
    assert r"\begin{tabular}" in (out / "tables" / "study_dse-quick.tex").read_text()
    report = (out / "report.md").read_text()
    assert "## Studies outside the paper's tables" in report and "| dse-quick | 5 | 3 | t1, t0 |" in report


def test_the_front_is_drawn_at_the_validation_accuracy_it_is_computed_on():
    """On the size panel the dashed front runs through the front trials' validation accuracies (not their test
    accuracies, which the dots show), and each front trial carries its one name for its label."""
    import matplotlib.pyplot as plt

    from dse.figures import _draw_ours, ours_points

    rows = [(0, 80.0, 85.0, 100_000), (1, 85.0, 80.0, 200_000), (2, 70.0, 90.0, 150_000)]
    trials = pd.DataFrame([dict(id=10 + i, study="s", optuna_trial_number=i, status="complete", dataset="cifar10",
                                model_name="shallow_sqnxt_10_0_325x", arch="shallow_sqnxt", best_val_acc=v,
                                test_acc=t, checkpoint_bytes=b, macs=1e6, sec_per_epoch=1.0, train_images=1000,
                                device="cpu", precision="fp32", epochs=2, data_fraction=0.02, test_images=1000)
                           for i, v, t, b in rows])
    fig, ax = plt.subplots()
    front = _draw_ours(ax, ours_points(trials), "ckpt_mb")
    dashed = [ln for ln in ax.lines if ln.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [80.0, 85.0]  # validation, smallest first
    assert list(front["display"]) == ["Shallow SqueezeNext-10-0.325x"] * 2 and list(front["id"]) == [10, 11]
    plt.close(fig)


def test_the_target_figure_draws_each_front_on_its_own_axes(tmp_path):
    """Latency panel: the fast trial is on the front; RAM panel: the small one is; each front at validation
    accuracy, on the x it was computed with."""
    import matplotlib.pyplot as plt

    from dse.figures_target import _panel, target_figure

    rows = [(0, 80.0, 0.2, 90_000), (1, 85.0, 0.5, 30_000), (2, 70.0, 0.9, 20_000), (3, 60.0, 0.8, 95_000)]
    trials = pd.DataFrame([dict(id=10 + i, study="s", optuna_trial_number=i, status="complete", dataset="cifar10",
                                model_name="shallow_sqnxt_10_0_325x", arch="shallow_sqnxt", best_val_acc=v,
                                latency_p50_ms=lat, ram_bytes_int8=ram, epochs=2, train_images=1000,
                                data_fraction=0.02, test_images=1000) for i, v, lat, ram in rows])
    fig, (a, b) = plt.subplots(1, 2)
    _panel(a, trials, "latency_p50_ms", "ms", 1.0)
    _panel(b, trials, "ram_bytes_int8", "KB", 1e-3)
    assert list(a.lines[0].get_xdata()) == [0.2, 0.5] and list(a.lines[0].get_ydata()) == [80.0, 85.0]
    assert list(b.lines[0].get_xdata()) == [20.0, 30.0] and list(b.lines[0].get_ydata()) == [70.0, 85.0]
    plt.close(fig)
    assert target_figure(trials.drop(columns=["latency_p50_ms"]), tmp_path / "t.png").stat().st_size > 5_000
