"""Benchmarks and studies of cfg_jax: run from the repository root as `python -m benchmarks.<name>`
(each prints its figures and writes them to benchmarks/results/). `common` holds what they share."""
