"""Preset TOML files, shipped as package data."""
