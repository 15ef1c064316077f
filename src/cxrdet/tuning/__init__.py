"""Optuna tuning: study helpers shared by the tuning stages, and the anchor search."""
