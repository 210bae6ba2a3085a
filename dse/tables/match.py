"""Match the paper's rows to store trials and aggregate them (set-based pandas, no per-row queries).

A paper row matches the trials with status "complete" whose ``model_name`` is the row's registry name and
whose ``dataset`` is the row's (cifar100 for Table 6, cifar10 elsewhere); where the row fixes a variable the
other rows leave free (Table 4's dropout, Table 6's optimizer) the trial must have that value too.

Among the matching trials:
  1. the largest budget wins: budget = epochs x training images (``train_images``, or ``data_fraction`` x
     ``NOMINAL_TRAIN_IMAGES`` where a trial did not record the count); fewer epochs or images never average
     with more;
  2. within that budget, trials are grouped by training config (optimizer, lr, schedule, dropout, activation,
     batch size) and the config with the best mean validation accuracy is reported (search on validation,
     report on test: choosing on the test set would leak it into the result); the note says how many
     configs competed;
  3. its seeds are aggregated: mean, sample std and n of ``test_acc`` (test accuracy at the best-validation
     epoch, percent).

Speed: a trial's ``sec_per_epoch`` is the mean training seconds of *its* epoch, which may be a subset (1,000
images in the quick budget). The tables show seconds per full 50,000-image epoch instead, from the measured
images per second (``train_images / sec_per_epoch``), so that ours and the paper's count the same work.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dse import store as st
from dse.store import COMPLETE, FAILED

#: CIFAR-10/100 training images (before the validation split): the unit of ``data_fraction`` when a trial
#: did not record ``train_images``. Only used to rank budgets, never shown as a measurement.
NOMINAL_TRAIN_IMAGES = 50_000

#: Images in one full CIFAR-10/100 training epoch as the paper counts it (its "seconds per epoch").
FULL_EPOCH_IMAGES = 50_000

#: Variables of a training config besides the model (the seed is what we average over).
CONFIG_COLUMNS = ("optimizer", "lr", "schedule", "dropout", "activation", "batch_size")

#: Statuses that mean "will run / is running" (not yet a result).
PENDING = ("planned", "queued", "running", "interrupted")

RESULT_COLUMNS = (
    "table", "row", "status", "status_text", "acc_mean", "acc_std", "n", "val_mean", "ckpt_bytes", "params",
    "macs", "sec_mean", "sec_full_mean", "devices", "precisions", "epochs", "data_fraction", "train_images",
    "test_images", "data_sources", "n_budgets", "n_configs", "config", "trial_ids", "trial_refs", "studies",
    "int8_bytes",
)


def _key(frame: pd.DataFrame, cols) -> pd.Series:
    """One string per row from ``cols`` (NaN-safe), used as a groupby key."""
    # explicit "None" for missing values: pandas 3's string dtype keeps None missing, and groupby drops missing keys
    parts = [frame[c].astype("object").map(lambda v: "None" if v is None or (isinstance(v, float) and np.isnan(v))
                                           else str(v)) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out + "|" + p
    return out


def _joined(values) -> str:
    vals = sorted({str(v) for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))})
    return ", ".join(vals)


def trial_ref(study: str, number) -> str:
    """'cpu-quick t12': the study and the trial's name (Optuna's trial 12, as optuna-dashboard, the sweep log and
    dse.deploy call it); 'id?' when the trial never reached Optuna."""
    return f"{study} {st.trial_name(None if number is None or pd.isna(number) else int(number))}"


def candidates(paper: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Every (paper row, trial) pair that matches by model, dataset and the row's fixed variables."""
    left = paper[["table", "row", "model_name", "dataset", "dropout", "optimizer"]].rename(
        columns={"dropout": "p_dropout", "optimizer": "p_optimizer"})
    cand = left.merge(trials, on=["model_name", "dataset"], how="inner")
    if cand.empty:
        return cand
    ok = cand["p_dropout"].isna() | np.isclose(cand["dropout"].astype(float),
                                               cand["p_dropout"].astype(float).fillna(-1.0), atol=1e-9)
    same_opt = cand["optimizer"].astype("object") == cand["p_optimizer"].astype("object")
    ok &= cand["p_optimizer"].isna() | same_opt
    return cand[ok.to_numpy()]


#: The key of a paper row (a list: pandas reads a tuple as one key).
_ROW = ["table", "row"]


def aggregate(paper: pd.DataFrame, trials: pd.DataFrame, deployments: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """One result row per paper row (same order), columns ``RESULT_COLUMNS``; see the module docstring."""
    base = paper[_ROW].copy()
    cand = candidates(paper, trials) if len(trials) else pd.DataFrame()
    if cand.empty:
        out = base.assign(status="not run")
        return _finish(out)

    done = cand[cand["status"] == COMPLETE].copy()
    if not done.empty:
        base = base.merge(_complete_results(done), on=_ROW, how="left")
    else:
        base["status"] = pd.NA
    base = _merge_other_states(base, cand)
    _set_status(base)
    _fill_sizes(base)
    base = base.drop(columns=[c for c in base.columns if c.startswith("_")])
    out = _finish(base)
    if deployments is not None and len(deployments):
        out = _attach_int8(out, paper, deployments)
    return out


def _complete_results(done: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, row) with a complete trial: its chosen config's seed statistics, status "ok"."""
    _add_budget(done)
    n_budgets = done.groupby(_ROW)["_bkey"].nunique().rename("n_budgets")
    chosen, n_configs = _best_config(_largest_budget(done))
    agg = _seed_stats(chosen).join(n_budgets).join(n_configs).reset_index()
    agg["status"] = "ok"
    agg["config"] = [_describe_config(k) for k in agg["config"]]
    return agg


def _add_budget(done: pd.DataFrame) -> None:
    """Adds to ``done`` its budget (epochs x images), seconds per full epoch (s) and a budget key."""
    nominal = done["data_fraction"].astype(float) * NOMINAL_TRAIN_IMAGES
    imgs = done["train_images"].astype(float).fillna(nominal)
    done["_budget"] = done["epochs"].astype(float) * imgs
    # seconds per full 50,000-image epoch from the measured images/s (unknown without train_images)
    done["_sec_full"] = (done["sec_per_epoch"].astype(float) * FULL_EPOCH_IMAGES
                         / done["train_images"].astype(float))
    done["_bkey"] = _key(done, ("epochs", "data_fraction", "train_images"))


def _largest_budget(done: pd.DataFrame) -> pd.DataFrame:
    """The trials of ``done`` at their (table, row)'s largest budget."""
    # largest budget; among equal budget products, more epochs first
    done["_rank"] = done["_budget"] * 1e6 + done["epochs"].astype(float)
    return done[done["_rank"] == done.groupby(_ROW)["_rank"].transform("max")]


def _best_config(done: pd.DataFrame) -> tuple[pd.DataFrame, pd.Series]:
    """The trials of each row's best config (mean validation accuracy), and the number of configs per row."""
    # chosen on validation, never on test: choosing on the test set would leak it into the result
    done["_ckey"] = _key(done, CONFIG_COLUMNS)
    cg = done.groupby([*_ROW, "_ckey"]).agg(_val=("best_val_acc", "mean"), _n=("id", "size"))
    cg = cg.reset_index().sort_values([*_ROW, "_val", "_n"],
                                      ascending=[True, True, False, False],
                                      na_position="last")
    n_configs = cg.groupby(_ROW).size().rename("n_configs")
    best = cg.drop_duplicates(_ROW)[[*_ROW, "_ckey"]]
    chosen = done.merge(best, on=[*_ROW, "_ckey"]).sort_values("id")
    chosen["_tref"] = [trial_ref(s, n) for s, n in zip(chosen["study"], chosen["optuna_trial_number"],
                                                      strict=True)]
    return chosen, n_configs


def _seed_stats(chosen: pd.DataFrame) -> pd.DataFrame:
    """Per (table, row) index: accuracy mean/std/n over the chosen trials (percent), their sizes, speeds, facts."""
    return chosen.groupby(_ROW).agg(
        acc_mean=("test_acc", "mean"), acc_std=("test_acc", "std"), n=("test_acc", "count"),
        val_mean=("best_val_acc", "mean"), ckpt_bytes=("checkpoint_bytes", "median"),
        params=("params", "median"), macs=("macs", "median"), sec_mean=("sec_per_epoch", "mean"),
        sec_full_mean=("_sec_full", "mean"),
        epochs=("epochs", "first"), data_fraction=("data_fraction", "first"),
        train_images=("train_images", "max"), test_images=("test_images", "max"),
        int8_trial=("int8_bytes", "median"),
        devices=("device", _joined), precisions=("precision", _joined),
        data_sources=("data_source", _joined),
        studies=("study", _joined), trial_ids=("id", lambda s: sorted(int(v) for v in s)),
        trial_refs=("_tref", list),
        config=("_ckey", "first"),
    )


def _merge_other_states(base: pd.DataFrame, cand: pd.DataFrame) -> pd.DataFrame:
    """``base`` with each row's latest failure and failure count, pending states and any trial's sizes."""
    # rows without a complete trial: failed (with the latest reason) or pending, else not run
    failed = cand[cand["status"] == FAILED].sort_values("id").groupby(_ROW).agg(
        _reason=("fail_reason", "last"), _nfail=("id", "size"))
    pending = cand[cand["status"].isin(PENDING)].groupby(_ROW)["status"].agg(
        lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().sort_index().items())).rename("_pending")
    # our size of the architecture from any trial of it (cheap facts are recorded before training)
    size_any = cand.groupby(_ROW).agg(_ckpt_any=("checkpoint_bytes", "median"),
                                      _params_any=("params", "median"),
                                      _macs_any=("macs", "median"))
    return base.merge(failed, on=_ROW, how="left").merge(
        pending, on=_ROW, how="left").merge(size_any, on=_ROW, how="left")


def _set_status(base: pd.DataFrame) -> None:
    """Sets ``status`` and ``status_text`` of every row of ``base`` from its results, failures and pending trials."""
    ok = base["status"].astype("object").eq("ok")
    pairs = [_row_status(bool(is_ok), reason, nfail, pend)
             for is_ok, reason, nfail, pend in zip(ok, base["_reason"], base["_nfail"], base["_pending"], strict=True)]
    base["status"] = [s for s, _ in pairs]
    base["status_text"] = [text for _, text in pairs]


def _row_status(is_ok: bool, reason, nfail, pend) -> tuple[str, str]:
    """(status, status text) of one row: ok, pending, failed (with its reason) or not run."""
    if is_ok:
        return "ok", ""
    if isinstance(pend, str):
        return "pending", f"in progress ({pend})"
    if isinstance(reason, str) or (nfail is not None and not pd.isna(nfail)):
        # whole reason, one line: the renderer puts it in a footnote rather than cutting it
        return "failed", " ".join(str(reason or "no reason recorded").split())
    return "not run", ""


def _fill_sizes(base: pd.DataFrame) -> None:
    """Fills missing checkpoint bytes, params and MACs of ``base`` from any trial of the same row."""
    for c, src in (("ckpt_bytes", "_ckpt_any"), ("params", "_params_any"), ("macs", "_macs_any")):
        if c not in base:
            base[c] = np.nan
        base[c] = base[c].astype(float).fillna(base[src].astype(float))


def _describe_config(key: str) -> str:
    vals = key.split("|")
    pairs = zip(CONFIG_COLUMNS, vals, strict=True)
    return ", ".join(f"{c}={v}" for c, v in pairs if v not in ("None", "nan"))


def _finish(frame: pd.DataFrame) -> pd.DataFrame:
    for c in RESULT_COLUMNS:
        if c not in frame.columns:
            frame[c] = None if c in ("trial_ids", "trial_refs", "config", "status_text") else np.nan
    if "int8_trial" in frame.columns:
        frame["int8_bytes"] = frame["int8_trial"]
    frame["status_text"] = frame["status_text"].fillna("")
    frame["status"] = frame["status"].fillna("not run")
    return frame


def deployments_by_row(out: pd.DataFrame, paper: pd.DataFrame, deployments: pd.DataFrame) -> pd.DataFrame:
    """Deployment measurements per (table, row): the chosen trials' own where present, else any of the model.

    One row per (table, row, format): the most recent measurement (``created_at``), with its host.
    """
    dep = deployments.copy()
    ids = out[["table", "row", "trial_ids"]].explode("trial_ids").dropna(subset=["trial_ids"])
    ids["trial_id"] = ids["trial_ids"].astype(int)
    own = ids[["table", "row", "trial_id"]].merge(dep.dropna(subset=["trial_id"]).astype({"trial_id": int}),
                                                  on="trial_id")
    own["_own"] = 1
    by_model = paper[["table", "row", "model_name"]].merge(dep.drop(columns=["trial_id"]), on="model_name")
    by_model["_own"] = 0
    both = pd.concat([own.drop(columns=["trial_id"]), by_model], ignore_index=True)
    if both.empty:
        return both
    both = both.sort_values(["table", "row", "format", "_own", "created_at"])
    return both.drop_duplicates(["table", "row", "format"], keep="last")


def _attach_int8(out: pd.DataFrame, paper: pd.DataFrame, deployments: pd.DataFrame) -> pd.DataFrame:
    per = deployments_by_row(out, paper, deployments)
    if per.empty:
        return out
    int8 = per[per["format"] == "onnx_int8"][["table", "row", "file_bytes"]]
    int8 = int8.rename(columns={"file_bytes": "_dep"})
    out = out.merge(int8, on=["table", "row"], how="left")
    out["int8_bytes"] = out["_dep"].astype(float).fillna(out["int8_bytes"].astype(float))
    return out.drop(columns=["_dep"])
