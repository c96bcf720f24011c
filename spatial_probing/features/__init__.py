"""features stage of the pipeline."""
