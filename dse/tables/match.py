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
    "data_sources", "n_budgets", "n_configs", "config", "trial_ids", "trial_refs", "studies", "int8_bytes",
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
    """'cpu-quick #12': the study and Optuna's trial number, as optuna-dashboard shows the trial (the store's
    row id means nothing there); '#?' when the trial never reached Optuna."""
    return f"{study} #{'?' if number is None or pd.isna(number) else int(number)}"


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


def aggregate(paper: pd.DataFrame, trials: pd.DataFrame, deployments: pd.DataFrame | None = None
              ) -> pd.DataFrame:
    """One result row per paper row (same order), columns ``RESULT_COLUMNS``; see the module docstring."""
    base = paper[["table", "row"]].copy()
    cand = candidates(paper, trials) if len(trials) else pd.DataFrame()
    if cand.empty:
        out = base.assign(status="not run")
        return _finish(out)

    done = cand[cand["status"] == COMPLETE].copy()
    if not done.empty:
        nominal = done["data_fraction"].astype(float) * NOMINAL_TRAIN_IMAGES
        imgs = done["train_images"].astype(float).fillna(nominal)
        done["_budget"] = done["epochs"].astype(float) * imgs
        # seconds per full 50,000-image epoch from the measured images/s (unknown without train_images)
        done["_sec_full"] = (done["sec_per_epoch"].astype(float) * FULL_EPOCH_IMAGES
                             / done["train_images"].astype(float))
        done["_bkey"] = _key(done, ("epochs", "data_fraction", "train_images"))
        g = done.groupby(["table", "row"])
        n_budgets = g["_bkey"].nunique().rename("n_budgets")
        # largest budget; among equal budget products, more epochs first
        done["_rank"] = done["_budget"] * 1e6 + done["epochs"].astype(float)
        done = done[done["_rank"] == done.groupby(["table", "row"])["_rank"].transform("max")]
        done["_ckey"] = _key(done, CONFIG_COLUMNS)
        cg = done.groupby(["table", "row", "_ckey"]).agg(_val=("best_val_acc", "mean"), _n=("id", "size"))
        cg = cg.reset_index().sort_values(["table", "row", "_val", "_n"],
                                          ascending=[True, True, False, False],
                                          na_position="last")
        n_configs = cg.groupby(["table", "row"]).size().rename("n_configs")
        best = cg.drop_duplicates(["table", "row"])[["table", "row", "_ckey"]]
        chosen = done.merge(best, on=["table", "row", "_ckey"]).sort_values("id")
        chosen["_tref"] = [trial_ref(s, n) for s, n in zip(chosen["study"], chosen["optuna_trial_number"],
                                                          strict=True)]
        g = chosen.groupby(["table", "row"])
        agg = g.agg(
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
        agg = agg.join(n_budgets).join(n_configs).reset_index()
        agg["status"] = "ok"
        agg["config"] = [_describe_config(k) for k in agg["config"]]
        base = base.merge(agg, on=["table", "row"], how="left")
    else:
        base["status"] = pd.NA

    # rows without a complete trial: failed (with the latest reason) or pending, else not run
    failed = cand[cand["status"] == FAILED].sort_values("id").groupby(["table", "row"]).agg(
        _reason=("fail_reason", "last"), _nfail=("id", "size"))
    pending = cand[cand["status"].isin(PENDING)].groupby(["table", "row"])["status"].agg(
        lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().sort_index().items())).rename("_pending")
    # our size of the architecture from any trial of it (cheap facts are recorded before training)
    size_any = cand.groupby(["table", "row"]).agg(_ckpt_any=("checkpoint_bytes", "median"),
                                                  _params_any=("params", "median"),
                                                  _macs_any=("macs", "median"))
    base = base.merge(failed, on=["table", "row"], how="left").merge(
        pending, on=["table", "row"], how="left").merge(size_any, on=["table", "row"], how="left")
    ok = base["status"].astype("object").eq("ok")
    status, text = [], []
    for is_ok, reason, nfail, pend in zip(ok, base["_reason"], base["_nfail"], base["_pending"], strict=True):
        if bool(is_ok):
            status.append("ok")
            text.append("")
        elif isinstance(pend, str):
            status.append("pending")
            text.append(f"in progress ({pend})")
        elif isinstance(reason, str) or (nfail is not None and not pd.isna(nfail)):
            # whole reason, one line: the renderer puts it in a footnote rather than cutting it
            status.append("failed")
            text.append(" ".join(str(reason or "no reason recorded").split()))
        else:
            status.append("not run")
            text.append("")
    base["status"] = status
    base["status_text"] = text
    for c, src in (("ckpt_bytes", "_ckpt_any"), ("params", "_params_any"), ("macs", "_macs_any")):
        if c not in base:
            base[c] = np.nan
        base[c] = base[c].astype(float).fillna(base[src].astype(float))
    base = base.drop(columns=[c for c in base.columns if c.startswith("_")])
    out = _finish(base)
    if deployments is not None and len(deployments):
        out = _attach_int8(out, paper, deployments)
    return out


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
