"""The `moor` command line: argument parsing, the gRPC client, printers and `describe` output."""
