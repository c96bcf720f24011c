"""probes stage of the pipeline."""
