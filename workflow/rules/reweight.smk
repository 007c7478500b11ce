# reweight: samples.h5 + data.h5 -> reweight.h5 + metrics.json  (flowsci reweight)
# Needs from common.smk: RESULTS, RUNS, config, flowsci_cmd(stage).
import re as _re_rw

_RW_SYSTEMS = "|".join(_re_rw.escape(s) for s in config["systems"])
_RW_RUNS = "|".join(_re_rw.escape(r) for r in config["runs"])


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
    wildcard_constraints:
        system=_RW_SYSTEMS,
        run=_RW_RUNS,
    conda:
        "../../envs/flowsci.yaml"
    shell:
        flowsci_cmd("reweight") + " --run {wildcards.run} > {log} 2>&1"
