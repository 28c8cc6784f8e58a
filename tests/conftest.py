"""Test-wide set-up: gevent monkey-patching must precede every other import."""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import tempfile  # noqa: E402

# Keep tiktoken's cache private to the test run, so the offline seeding path is
# exercised on every run rather than hidden by a warm user cache.
os.environ.setdefault("TIKTOKEN_CACHE_DIR", tempfile.mkdtemp(prefix="llmsim-tiktoken-"))
