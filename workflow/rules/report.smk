# report: per-run figures + tables (flowsci report --run R --no-summary) and summary.csv
# across runs (flowsci report --summary-only). Figures and tables are report() outputs, so
# `snakemake --report report.html` renders a self-contained report.
# Needs from common.smk: P, RUNS, config, flowsci_cmd(stage), system_of(run).


include: "report_helpers.smk"


rule report_run:
    input:
        h5=P("reweight"),
        metrics=P("metrics"),
    output:
        **{stem: _rp_figure(stem) for stem in REPORT_FIGURES},
        table=report(
            P("table_html"),
            caption="../report/table.rst",
            category="6. Observables",
            subcategory="{system}",
            labels=_rp_labels,
        ),
        csv=P("table_csv"),
    log:
        P("log_report"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/report_run.tsv"
    conda:
        CONDA_ENV
    params:
        cmd=flowsci_cmd("report"),
        captions=_rp_captions,
    shell:
        "{params.cmd} --run {wildcards.run} --no-summary > {log} 2>&1"


rule report_summary:
    input:
        [P("metrics").format(system=system_of(r), run=r) for r in RUNS],
    output:
        report(
            P("summary"),
            caption="../report/summary.rst",
            category="0. Summary",
            labels={"table": "all runs"},
        ),
    log:
        P("log_summary"),
    benchmark:
        f"{RESULTS}/benchmarks/report_summary.tsv"
    conda:
        CONDA_ENV
    params:
        cmd=flowsci_cmd("report"),
    shell:
        "{params.cmd} --summary-only > {log} 2>&1"
