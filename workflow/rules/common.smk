# Shared helpers: config validation (same schema as the CLI), paths and the CLI prefix.
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir)))  # the repo's flowsci, even if not installed

from flowsci.config import dump_config, validate_config

config = validate_config(config, source="snakemake config")
RESULTS = config["results_dir"]
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
    """Shell prefix calling a stage with the validated config (no progress bars in logs)."""
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


# ---- report helpers (report.smk)
REPORT_FIGURES = {  # file stem -> report category (same five figures for every system kind)
    "energy": "1. Energy",
    "weights": "2. Importance weights",
    "training": "3. Training",
    "observables": "4. Structure",
    "correlations": "5. Correlations",
}


def _rp_labels(wildcards):
    spec = config["runs"][wildcards.run]
    objective = spec.get("training", {}).get("objective", {}).get("name", "likelihood")
    return {"system": wildcards.system, "run": wildcards.run,
            "model": spec["model"]["name"], "objective": objective}


def _rp_figure(stem):
    return report(
        f"{RESULTS}/{{system}}/{{run}}/figures/{stem}.png",
        caption=f"../report/{stem}.rst",
        category=REPORT_FIGURES[stem],
        subcategory="{system}",
        labels=_rp_labels,
    )


def report_outputs():
    """Every final output of the report stage (for the Snakefile's `rule all`)."""
    outs = [f"{RESULTS}/summary.csv"]
    for r in RUNS:
        d = f"{RESULTS}/{system_of(r)}/{r}"
        outs += [f"{d}/figures/{stem}.png" for stem in REPORT_FIGURES]
        outs += [f"{d}/table.html", f"{d}/table.csv"]
    return outs
