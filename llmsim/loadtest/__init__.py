"""What the locustfiles import: streaming client, metrics, users, scoring, shapes, report."""
