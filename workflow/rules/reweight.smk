# reweight: samples.h5 + data.h5 -> reweight.h5 + metrics.json  (flowsci reweight)
# Needs from common.smk: RESULTS, RUNS, config, flowsci_cmd(stage).
rule reweight:
    input:
        samples=f"{RESULTS}/{{system}}/{{run}}/samples.h5",
        data=f"{RESULTS}/{{system}}/data.h5",
    output:
        h5=f"{RESULTS}/{{system}}/{{run}}/reweight.h5",
        metrics=f"{RESULTS}/{{system}}/{{run}}/metrics.json",
    log:
        f"{RESULTS}/{{system}}/{{run}}/logs/reweight.log",
    benchmark:
        f"{RESULTS}/{{system}}/{{run}}/benchmarks/reweight.tsv"
    conda:
        "../../envs/flowsci.yaml"
    params:
        spec=section("runs", "{run}", "reweighting"),
        cmd=flowsci_cmd("reweight"),
    shell:
        "{params.cmd} --run {wildcards.run} > {log} 2>&1"
