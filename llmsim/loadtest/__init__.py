"""What the locustfiles import: streaming client, metrics, users, scoring, shapes, report.

Importing llmsim.loadtest.users (or .plugin) registers the --llm-* options and
the run listeners on locust.events; importing .capacity adds the capacity
test's options and listeners (they act only where CapacityUser runs). The
other modules are plain library code.
"""
