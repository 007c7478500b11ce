# preprocess: raw input or generator -> results/{system}/data.h5


def preprocess_inputs(wildcards):
    data = config["systems"][wildcards.system]["data"]
    return [data["input"]["path"]] if data["source"] == "file" else []


rule preprocess:
    input:
        preprocess_inputs,
    output:
        f"{RESULTS}/{{system}}/data.h5",
    params:
        spec=section("systems", "{system}"),
    log:
        f"{RESULTS}/{{system}}/logs/preprocess.log",
    benchmark:
        f"{RESULTS}/{{system}}/benchmarks/preprocess.tsv"
    conda:
        "../../envs/flowsci.yaml"
    shell:
        flowsci_cmd("preprocess") + " --system {wildcards.system} --force > {log} 2>&1"
