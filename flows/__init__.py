"""Prefect flows: thin wrappers over `tracefactory.pipeline`."""
