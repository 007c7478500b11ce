"""Reading stage outputs for reports: train_log.csv, reweight.h5, metrics.json; tables.

reweight.h5 layout (written by flowsci.stages.reweight):
  log_weights [N]            normalised log-weights of the (finite) flow samples
  energies [N]               reduced energies of those samples
  axes/<name>                bin edges (<name> ends in _hist) or abscissae (curves)
  {data,flow,reweighted}/<name>, <name>_err   estimates and bootstrap standard errors
  mh/chain [T], mh/energy [T] independence Metropolis-Hastings chain (if run)
  attrs: observable_set, labels (JSON), provenance (see flowsci.data.hdf5)
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..io import atomic_output
from ..errors import DataError

SOURCES = ("data", "flow", "reweighted")


def read_train_log(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns of train_log.csv as float arrays (empty cells -> nan). {} if the file is absent."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as e:
        raise DataError(f"{path}: unreadable training log ({type(e).__name__}: "
                        f"{str(e)[:160]}); not a CSV text file") from None
    if not rows:
        return {}
    cols: dict[str, np.ndarray] = {}
    for key in rows[0]:
        if key is None:
            continue
        vals = []
        for r in rows:
            try:
                vals.append(float(r.get(key) or "nan"))
            except ValueError:
                vals.append(float("nan"))
        cols[key] = np.array(vals)
    return cols


def last_finite(a: np.ndarray | None) -> float | None:
    """Last finite entry of an array, or None."""
    if a is None:
        return None
    a = a[np.isfinite(a)]
    return float(a[-1]) if a.size else None


def training_summary(log: dict[str, np.ndarray]) -> dict[str, float | None]:
    """val_nll (last), training time in s (last of a cumulative `seconds` column, else the sum),
    mean NFE per training step, steps."""
    sec = log.get("seconds")
    time = None
    if sec is not None and np.isfinite(sec).any():
        s = sec[np.isfinite(sec)]
        time = float(s[-1]) if np.all(np.diff(s) >= 0) else float(s.sum())
    nfe = log.get("nfe")
    nfe_mean = float(np.nanmean(nfe)) if nfe is not None and np.isfinite(nfe).any() else None
    return {"val_nll": last_finite(log.get("val_nll")), "training_time_s": time,
            "train_nfe_mean": nfe_mean, "train_steps": last_finite(log.get("step"))}


def read_reweight(path: str | os.PathLike) -> dict[str, Any]:
    """Load reweight.h5 into {'log_weights', 'energies', 'axes', 'data', 'flow', 'reweighted',
    'mh', 'attrs'} with numpy arrays; DataError naming the file if it is missing or malformed."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: reweighting output missing (run `flowsci reweight` first)")
    try:
        with h5py.File(path, "r") as f:
            out: dict[str, Any] = {"attrs": {k: (v.decode() if isinstance(v, bytes) else v)
                                             for k, v in f.attrs.items()}}
            for k in ("log_weights", "energies"):
                if k not in f:
                    raise DataError(f"{path}: no dataset {k!r}")
                out[k] = f[k][()]
            for g in ("axes", *SOURCES, "mh"):
                out[g] = {k: f[g][k][()] for k in f[g]} if g in f else {}
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({e})") from None
    out["labels"] = json.loads(out["attrs"].get("labels", "{}"))
    return out


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: metrics missing (run `flowsci reweight` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(metrics, dict):
        raise DataError(f"{path}: metrics must be a JSON object (a mapping), found a "
                        f"{type(metrics).__name__}; rerun `flowsci reweight`")
    for key in ("observables", "free_energies", "mh"):
        if metrics.get(key) is not None and not isinstance(metrics[key], dict):
            raise DataError(f"{path}: metrics entry {key!r} must be a mapping; rerun "
                            "`flowsci reweight`")
    if not isinstance(metrics.get("warnings", []), list):
        raise DataError(f"{path}: metrics entry 'warnings' must be a list; rerun "
                        "`flowsci reweight`")
    return metrics


def fmt(value: Any, err: Any = None) -> str:
    """'1.234 ± 0.005' with the value rounded to the error's second significant digit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, (int, float)):
        return str(value)
    if err is None or not np.isfinite(err) or err <= 0 or not np.isfinite(value):
        return f"{value:.6g}"
    digits = max(0, 1 - int(math.floor(math.log10(err))))
    return f"{value:.{digits}f} ± {err:.{digits}f}"


def observable_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """One row per scalar observable / free energy: observable, data, flow, reweighted (± err)."""
    rows = []
    for section in ("observables", "free_energies"):
        for name, est in metrics.get(section, {}).items():
            if section == "free_energies" and est.get("reference") == name:
                continue  # ΔF of the reference state is 0 by definition
            label = (name if section == "observables"
                     else f"ΔF({name} − {est.get('reference', '?')}) [kT]")
            rows.append({"observable": label, **{s: fmt(est.get(s), est.get(f"{s}_err"))
                                                 for s in SOURCES}})
    mh = metrics.get("mh")
    if mh:
        rows.append({"observable": "mean_energy (independence MH)", "data": "", "flow": "",
                     "reweighted": fmt(mh.get("mean_energy"), mh.get("mean_energy_err"))})
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """Rows (dicts; union of keys as columns, first-seen order) as CSV, atomically."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return Path(path)


def write_html_table(path: str | os.PathLike, rows: list[dict[str, Any]], title: str,
                     warnings: list[str] | None = None) -> Path:
    """A small self-contained HTML table, atomically, below the run's `warnings` (in red)."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(c, '')))}</td>" for c in cols)
                   + "</tr>" for r in rows)
    warn = "".join(f"<p style='color:#b00'><b>Warning:</b> {html.escape(w)}</p>"
                   for w in warnings or [])
    text = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>table{border-collapse:collapse;font-family:sans-serif}"
            "td,th{border:1px solid #999;padding:3px 8px;text-align:right}</style></head><body>"
            f"<h3>{html.escape(title)}</h3>{warn}<table><tr>{head}</tr>{body}</table>"
            "</body></html>")
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def summary_row(run: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """One line of summary.csv: NLL, ESS %, acceptance, observables ± errors, time, NFE."""
    row: dict[str, Any] = {"run": run, "system": metrics.get("system"),
                           "model": metrics.get("model"), "objective": metrics.get("objective")}
    for k in ("test_nll", "test_nll_tight", "test_nll_tight_err", "val_nll", "n_requested",
              "n_samples", "n_failed", "ess", "pareto_k",
              "max_weight", "log_z", "log_z_err", "training_time_s", "train_nfe_mean",
              "sample_nfe"):
        row[k] = metrics.get(k)
    for key, frac in (("ess_percent", "ess_fraction"),
                      ("ess_percent_survivors", "ess_fraction_survivors"),
                      ("failed_percent", "failed_fraction"),
                      ("mirrored_percent", "mirrored_fraction")):
        row[key] = None if metrics.get(frac) is None else 100 * metrics[frac]
    row["warnings"] = " | ".join(metrics.get("warnings") or [])
    mh = metrics.get("mh") or {}
    row["mh_acceptance"] = mh.get("acceptance")
    row["mh_tau"] = mh.get("tau")
    for section, prefix in (("observables", ""), ("free_energies", "dF_")):
        for name, est in metrics.get(section, {}).items():
            for s in SOURCES:
                row[f"{prefix}{name}_{s}"] = est.get(s)
                row[f"{prefix}{name}_{s}_err"] = est.get(f"{s}_err")
    return row
