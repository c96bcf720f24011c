"""Studies: programs that run several toolkit commands in order and write one report (the top layer)."""
