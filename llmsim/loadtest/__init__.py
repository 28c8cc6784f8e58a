"""The Locust toolkit: what the locustfiles import.

Importing llmsim.loadtest.users (or .plugin) registers the --llm-* options and
the run listeners on locust.events; the other modules are plain library code.
"""
