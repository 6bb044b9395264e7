"""mergenas: MergeNAS, differentiable architecture search with one merged convolution per edge.

Modules: `ops` (merged kernels, Propositions 1-3), `spaces` (search spaces and their networks),
`search` (the bi-level search), `data` (CIFAR-10), `benchmarks` (NAS-Bench-201 look-ups),
`cli` (the `mergenas` command).
"""

__version__ = "0.1.0"
