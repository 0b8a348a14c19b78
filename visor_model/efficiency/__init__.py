"""What a sample costs: analytic FLOPs (`flops`), per-sample accounting (`accounting`), synchronised latency
(`latency`) and the side-by-side speed benchmark (`speed_bench`)."""
