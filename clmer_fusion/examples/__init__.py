"""Example configs for `clmer-fusion bench` (shipped as package data)."""
