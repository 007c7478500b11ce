# report: per-run figures + tables (flowsci report --run R --no-summary) and summary.csv
# across runs (flowsci report --summary-only). Figures and tables are report() outputs, so
# `snakemake --report report.html` renders a self-contained report.
# Needs from common.smk: RESULTS, RUNS, config, flowsci_cmd(stage), system_of(run).
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
    conda:
        "../../envs/flowsci.yaml"
    params:
        cmd=flowsci_cmd("report"),
    shell:
        "{params.cmd} --run {wildcards.run} --no-summary > {log} 2>&1"


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
    params:
        cmd=flowsci_cmd("report"),
    shell:
        "{params.cmd} --summary-only > {log} 2>&1"
