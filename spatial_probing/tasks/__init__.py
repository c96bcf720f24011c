"""Probe tasks as plug-ins: each turns dataset rows into binary targets, row masks and fold groups."""
