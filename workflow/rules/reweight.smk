# reweight: samples.h5 + data.h5 -> reweight.h5 + metrics.json  (flowsci reweight)
# Needs from common.smk: P, config, flowsci_cmd(stage).
rule reweight:
    input:
        samples=P("samples"),
        data=P("data"),
    output:
        h5=P("reweight"),
        metrics=P("metrics"),
    resources:
        runtime=fixed_runtime(60),
        cpus_per_task=cpus_per_task,
        mem_mb=MEM_MB["reweight"],
    log:
        P("log_reweight"),
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/reweight.tsv"
    conda:
        CONDA_ENV
    params:
        spec=lambda w: json.dumps([config["runs"][w.run]["reweighting"],
                                   config["systems"][w.system].get("observables", {})],
                                  sort_keys=True),
        cmd=flowsci_cmd("reweight"),
    shell:
        "{params.cmd} --run {wildcards.run} > {log} 2>&1"
