"""encoders stage of the pipeline."""
