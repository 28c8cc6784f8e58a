"""What the locustfiles import: streaming client, metrics, users, scoring, shapes, report.

Importing llmsim.loadtest.users (or .plugin) registers the --llm-* options and
the run listeners on locust.events; the other modules are plain library code.
"""
