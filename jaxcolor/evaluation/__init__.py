"""Evaluation: metrics, scoring against the gray baseline, reports."""
