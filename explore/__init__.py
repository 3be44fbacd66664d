"""The `explore` command line: the composition root above `interests`, `exporters` and `streams`.

It is the only place that may reach every package; each subcommand imports what it needs when it
runs, so `explore serve` never loads PyTorch.

May import: `interests.*`, `exporters`, `streams.*`.
"""
