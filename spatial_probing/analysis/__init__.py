"""Analyses beside the probes: truth protocol, structure tests, zero-shot scoring, odd-one-out, RSA."""
