"""The `explore` subcommands, one module per command group.

Each module has `register(sub)`, which adds its parsers to the root parser's subparsers, and the
`cmd_*` functions those parsers call. A command parses, calls one function of the library
(`interests`, `exporters`, `streams`) and prints; the computing lives in the library, where it is
unit-tested. Library imports stay inside the commands so that `explore --help` is instant and the
streaming commands never import PyTorch.
"""
