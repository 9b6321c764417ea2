"""The wire API, generated from proto/moorage/v1 by `make proto`; never edited by hand."""
