"""Orchestration: the pipeline of one run, its schedule over engines, checkpoints and history."""
