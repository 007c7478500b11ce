# Shared helpers: config validation (same schema as the CLI), stage-file patterns (P, from
# flowsci.paths) and the CLI prefix.
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # the repo's flowsci, even if not installed

from flowsci.config import dump_config, validate_config
from flowsci.paths import rule_path

config = validate_config(config, source="snakemake config")
RESULTS = config["results_dir"]


def P(name):
    """The pattern of stage file `name` from flowsci.paths (the stages' own spelling)."""
    return rule_path(name, RESULTS)


RUNS = list(config["runs"])
SYSTEMS = list(config["systems"])
# The CLI reads the exact (validated, overridden) config that Snakemake uses.
CONFIG_FILE = f"{RESULTS}/.flowsci/config.yaml"
dump_config(config, CONFIG_FILE)

wildcard_constraints:
    system="|".join(SYSTEMS),
    run="|".join(RUNS),


# Conda environment of all rules (--sdm conda): the CUDA build of torch when the config asks
# for the GPU, else the CPU build (a path relative to the rule files in workflow/rules).
CONDA_ENV = f"../../envs/flowsci-{'cuda' if config['device'] == 'cuda' else 'cpu'}.yaml"


def init_from_model(wildcards):
    """The model.pt that runs.<run>.init_from starts from (a second training phase)."""
    source = config["runs"][wildcards.run].get("init_from")
    return [P("model").format(system=system_of(source), run=source)] if source else []


def system_of(run):
    return config["runs"][run]["system"]


def run_dir(run):
    return f"{RESULTS}/{system_of(run)}/{run}"


def flowsci_cmd(stage):
    """Shell prefix calling a stage with the validated config. --quiet: no progress bars; the
    stage writes progress lines (count, rate, elapsed, ETA, key figures) to its rule's log
    instead, every FLOWSCI_PROGRESS_INTERVAL seconds (default 30) or 10 % of the work."""
    return f"flowsci {flowsci_args(stage)}"


def flowsci_args(stage):
    """The arguments of flowsci_cmd(stage) after `flowsci` (for another launcher: torchrun)."""
    return f"{stage} --config {CONFIG_FILE} --quiet"


def section(*keys):
    """A config section as JSON, used as a param so that editing it re-runs the rule."""
    def get(wildcards):
        node = config
        for k in keys:
            node = node[k.format(**wildcards)]
        return json.dumps(node, sort_keys=True)
    return get


def run_section(*keys):
    """Only these keys of runs.<run> as a JSON param (editing sampling must not retrain)."""
    def get(wildcards):
        spec = config["runs"][wildcards.run]
        return json.dumps({k: spec[k] for k in keys}, sort_keys=True)
    return get


def n_shards(run):
    return config["runs"][run]["sampling"]["n_shards"]


def preprocess_inputs(wildcards):
    """The user's raw input file, when the system is read from one."""
    data = config["systems"][wildcards.system]["data"]
    return [data["input"]["path"]] if data["source"] == "file" else []


# Cluster resources (SLURM via snakemake-executor-plugin-slurm; a local run ignores them unless
# given --resources). Defaults for a real cluster, derived from the config; partitions and
# accounts live in workflow/profiles/slurm only. Override any of them per rule with
# --set-resources RULE:KEY=VALUE or the profile's set-resources. Runtimes are minutes and grow
# with the attempt: with the profile's `retries`, a train job that hit its time limit is
# resubmitted with more time and resumes from its last checkpoint.
TRAIN_SECONDS_PER_STEP = 2.0  # generous: maximum likelihood with an exact-trace field on a GPU
SAMPLE_SECONDS_PER_SAMPLE = 0.5  # generous: exact log q per sample (an autograd trace, LJ55)
MEM_MB = {"preprocess": 8000, "train": 16000, "sample_shard": 16000, "reweight": 8000}


def _minutes(seconds, attempt, base=30):
    return attempt * (base + math.ceil(seconds / 60))


def train_runtime(wildcards, attempt):
    """Minutes for a train job: 30 + steps x TRAIN_SECONDS_PER_STEP, times the attempt."""
    steps = config["runs"][wildcards.run]["training"]["steps"]
    return _minutes(steps * TRAIN_SECONDS_PER_STEP, attempt)


def sample_runtime(wildcards, attempt):
    """Minutes for a sample shard: 30 + its samples x SAMPLE_SECONDS_PER_SAMPLE, x attempt."""
    s = config["runs"][wildcards.run]["sampling"]
    return _minutes(math.ceil(s["n_samples"] / s["n_shards"]) * SAMPLE_SECONDS_PER_SAMPLE,
                    attempt)


def fixed_runtime(minutes):
    return lambda wildcards, attempt: attempt * minutes


def train_threads():
    """Torch threads of a train job: half the cores, 1 to 4. On 2 cores, two 1-thread trainings
    side by side beat one 2-thread training at a time (2 threads speed one job up 1.0-1.3x:
    docs/benchmarks.md, "Where a training step's time goes"). 4 where the total is unknown
    (cluster executors without --cores); --set-threads train=N overrides."""
    try:
        cores = int(workflow.cores)
    except Exception:  # noqa: BLE001 - Snakemake raises when no --cores was given
        return 4
    return max(1, min(4, cores // 2))


def cpus_per_task(wildcards, threads):
    """SLURM CPUs of a job: its threads (so --set-threads RULE=N changes both)."""
    return threads
