"""Scale-out: the rules' cluster resources, and the tiny workflow through a real one-node SLURM
cluster (.ci/slurm_local.sh) with workflow/profiles/slurm and snakemake-executor-plugin-slurm.

The cluster test is skipped only when the daemons cannot start here (it says why); with the
environment variable CI set (.ci/run sets it) that is a failure instead.
"""

import importlib.util
import json
import os
import re
import signal
import subprocess
import time
import warnings

import h5py
import pytest

from flowsci.data.hdf5 import validate_h5
from test_workflow import ROOT, TINY, _snakemake, _workdir

SCRIPT = ROOT / ".ci" / "slurm_local.sh"
RUN_TIMEOUT_S = 420  # the run takes ~2.5 min on 2 cores; the plugin can hang on status checks
# TINY enables refine for its run: one rule per enabled run, named refine_<run>
QUEUED = {"preprocess", "train", "sample_shard", "reweight", "refine_tiny"}
LOCAL = {"sample_gather", "report_run", "report_summary", "all"}
# The test cluster has no GPUs and maybe 1 CPU: no GPU requests, small memory, 1 CPU a job (a
# job asking for more CPUs than the node has would pend for ever). On the command line these
# replace the profile's default-resources and set-resources (its partitions) as a whole.
CLUSTER_OVERRIDES = [
    "--default-resources", "slurm_partition=debug",
    "--set-resources", "train:gpu=0", "sample_shard:gpu=0", "train:mem_mb=2000",
    "sample_shard:mem_mb=2000", "preprocess:mem_mb=2000", "reweight:mem_mb=2000",
    "--set-threads", "train=1",
    "--slurm-init-seconds-before-status-checks", "5", "--latency-wait", "5",
    "--slurm-keep-successful-logs",
]


def _dry_run_resources(stdout: str) -> dict:
    """{rule: resources line} of the first job of each rule in a dry run's output."""
    out = {}
    for rule, res in re.findall(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$",
                                stdout, flags=re.M):
        out.setdefault(rule, dict(kv.split("=", 1) for kv in res.split(", ")))
    return out


def test_cluster_resources_come_from_the_rules_and_config(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["runs"]["tiny"]["training"]["steps"] = 6000
    cfg["runs"]["tiny"]["sampling"].update(n_samples=3000, n_shards=2)
    # 4 cores: the train rule takes half of them (train_threads), and SLURM's cpus_per_task
    # follows the rule's threads
    r = _snakemake("-n", "--cores", "4", cwd=_workdir(tmp_path, cfg), timeout=300)
    assert r.returncode == 0, r.stderr
    res = _dry_run_resources(r.stdout)
    # runtime (minutes) = 30 + work x seconds per unit / 60: 6000 steps x 2 s, 1500 x 0.5 s
    assert res["train"]["runtime"] == "230" and res["train"]["gpu"] == "1"
    assert res["sample_shard"]["runtime"] == "43" and res["sample_shard"]["gpu"] == "1"
    assert res["train"]["mem_mb"] == "16000" and res["preprocess"]["runtime"] == "120"
    assert res["train"]["cpus_per_task"] == "2" and res["reweight"]["cpus_per_task"] == "1"
    assert "gpu" not in res["reweight"] and "gpu" not in res["sample_gather"]


@pytest.fixture
def slurm_cluster(tmp_path_factory):
    """A started one-node SLURM cluster (its state directory); stopped by PID afterwards."""
    def unavailable(why):
        if os.environ.get("CI"):
            pytest.fail(f"CI is set, so the SLURM test must run, but: {why}")
        warnings.warn(f"the local SLURM test is skipped: {why}")
        pytest.skip(why)

    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        unavailable("snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')")
    d = tmp_path_factory.mktemp("slurm")
    try:
        try:
            r = subprocess.run(["bash", str(SCRIPT), "start", str(d)], capture_output=True,
                               text=True, timeout=900)
        except subprocess.TimeoutExpired:
            unavailable(".ci/slurm_local.sh start did not finish within 900 s")
        if r.returncode == 3:
            unavailable(r.stderr.strip())
        assert r.returncode == 0, f"slurm_local.sh start failed:\n{r.stdout}\n{r.stderr}"
        print(r.stdout)
        yield d
    finally:
        s = subprocess.run(["bash", str(SCRIPT), "stop", str(d)], capture_output=True,
                           text=True, timeout=120)
        print(s.stdout, s.stderr)


@pytest.mark.slow
def test_tiny_workflow_through_local_slurm(tmp_path, slurm_cluster):
    (tmp_path / "wd").mkdir()
    wd = _workdir(tmp_path / "wd", TINY)
    log = tmp_path / "snakemake.log"
    cmd = ["snakemake", "--workflow-profile", str(ROOT / "workflow" / "profiles" / "slurm"),
           "--jobs", "2", *CLUSTER_OVERRIDES]
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=wd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group, by its id
            proc.wait(timeout=30)
            rc = None
    text = log.read_text()
    print(f"snakemake through SLURM: {time.monotonic() - t0:.0f} s")
    assert rc is not None, f"no end within {RUN_TIMEOUT_S} s:\n{text[-4000:]}"
    assert rc == 0, text[-6000:]

    # queued jobs went through sbatch (one SLURM log dir per rule), cheap ones stayed local
    submitted = set(re.findall(r"^rule (\w+):", text, flags=re.M))
    local = set(re.findall(r"^localrule (\w+):", text, flags=re.M))
    assert submitted == QUEUED and local == LOCAL, (submitted, local)
    slurm_logs = wd / ".snakemake" / "slurm_logs"
    assert {p.name for p in slurm_logs.iterdir()} == {f"rule_{r}" for r in QUEUED}
    assert len(re.findall(r"submitted with SLURM jobid \d+", text)) == 6  # 2 shards

    # every output of the stages
    res = wd / "results" / "dw4"
    run = res / "tiny"
    assert validate_h5(res / "data.h5")["kind"] == "particles"
    assert (run / "model.pt").stat().st_size > 1000
    for shard in (0, 1):
        validate_h5(run / "samples" / f"shard-{shard}.h5")
    with h5py.File(run / "samples.h5") as f:
        assert f["x"].shape[1:] == (4, 2) and f["x"].shape[0] + f.attrs["n_failed"] == 200
    assert (run / "reweight.h5").stat().st_size > 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert 1.0 <= metrics["ess"] <= metrics["n_samples"]
    for fig in ("energy", "weights", "training", "observables", "correlations"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000, fig
    for out in (run / "table.html", run / "table.csv", wd / "results" / "summary.csv"):
        assert out.stat().st_size > 0, out
    for name in ("train", "reweight", "sample-0", "sample-1", "sample-gather", "report",
                 "refine"):
        assert (run / "logs" / f"{name}.log").exists(), name
        assert (run / "benchmarks" / f"{name if name != 'report' else 'report_run'}.tsv"
                ).exists(), name
