"""Controlled grounding experiment: one small text encoder trained text-only or with images (issue 10)."""
