"""Structured-config schemas (pure dataclasses) and their registration with Hydra's ConfigStore."""
