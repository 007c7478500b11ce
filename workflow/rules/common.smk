# Shared helpers: config validation (same schema as the CLI), stage-file patterns (P, from
# flowsci.paths) and the CLI prefix.
import json
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


def system_of(run):
    return config["runs"][run]["system"]


def run_dir(run):
    return f"{RESULTS}/{system_of(run)}/{run}"


def flowsci_cmd(stage):
    """Shell prefix calling a stage with the validated config. --quiet: no progress bars; the
    stage writes progress lines (count, rate, elapsed, ETA, key figures) to its rule's log
    instead, every FLOWSCI_PROGRESS_INTERVAL seconds (default 30) or 10 % of the work."""
    return f"flowsci {stage} --config {CONFIG_FILE} --quiet"


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
