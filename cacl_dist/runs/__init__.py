"""What a run folder holds: lock and status, logs and metric rows, pseudo-label files, earlier
runs' records, the report."""
