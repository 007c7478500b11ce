# report: per-run figures + tables (flowsci report --run R --no-summary) and summary.csv
# across runs (flowsci report --summary-only). Figures and tables are report() outputs, so
# `snakemake --report report.html` renders a self-contained report.
# Needs from common.smk: RESULTS, RUNS, config, flowsci_cmd(stage), system_of(run).
import re as _re_rp

_RP_SYSTEMS = "|".join(_re_rp.escape(s) for s in config["systems"])
_RP_RUNS = "|".join(_re_rp.escape(r) for r in config["runs"])
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


rule report_run:
    input:
        h5=f"{RESULTS}/{{system}}/{{run}}/reweight.h5",
        metrics=f"{RESULTS}/{{system}}/{{run}}/metrics.json",
    output:
        **{stem: _rp_figure(stem) for stem in REPORT_FIGURES},
        table=report(
            f"{RESULTS}/{{system}}/{{run}}/table.html",
            caption="../report/table.rst",
            category="6. Observables",
            subcategory="{system}",
            labels=_rp_labels,
        ),
        csv=f"{RESULTS}/{{system}}/{{run}}/table.csv",
    log:
        f"{RESULTS}/{{system}}/{{run}}/logs/report.log",
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/report_run.tsv"
    wildcard_constraints:
        system=_RP_SYSTEMS,
        run=_RP_RUNS,
    conda:
        "../../envs/flowsci.yaml"
    shell:
        flowsci_cmd("report") + " --run {wildcards.run} --no-summary > {log} 2>&1"


rule report_summary:
    input:
        [f"{RESULTS}/{system_of(r)}/{r}/metrics.json" for r in RUNS],
    output:
        report(
            f"{RESULTS}/summary.csv",
            caption="../report/summary.rst",
            category="0. Summary",
            labels={"table": "all runs"},
        ),
    log:
        f"{RESULTS}/logs/report_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/report_summary.tsv"
    conda:
        "../../envs/flowsci.yaml"
    shell:
        flowsci_cmd("report") + " --summary-only > {log} 2>&1"


def report_outputs():
    """Every final output of the report stage (for the Snakefile's `rule all`)."""
    outs = [f"{RESULTS}/summary.csv"]
    for r in RUNS:
        d = f"{RESULTS}/{system_of(r)}/{r}"
        outs += [f"{d}/figures/{stem}.png" for stem in REPORT_FIGURES]
        outs += [f"{d}/table.html", f"{d}/table.csv"]
    return outs
