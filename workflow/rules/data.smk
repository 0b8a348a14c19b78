# Benchmark data: synthetic lmms-eval task folders generated deterministically from the seed.


rule generate_benchmark:
    output:
        "resources/benchmarks/{benchmark}/manifest.json",
    params:
        spec=lambda wildcards: config["benchmarks"][wildcards.benchmark],
        seed=config["seed"],
    log:
        "logs/generate_benchmark/{benchmark}.log",
    benchmark:
        "benchmarks/generate_benchmark/{benchmark}.tsv"
    threads: 1
    resources:
        mem_mb=2000,
    script:
        "../scripts/generate_benchmark.py"
