"""The `strongroom` command line: one module per command group."""
