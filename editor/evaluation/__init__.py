"""Evaluation harness: batched scoring, metrics as ``evaluate`` modules, before/after reports."""
