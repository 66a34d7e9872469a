"""Language server (pygls): `localspec.lsp`."""
