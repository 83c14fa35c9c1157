"""Seeded simulation of the engine against an independent auditor model."""
