"""``backfill dashboard``: the operator's console in a browser, on the checkpoint tables alone."""

from backfill.dashboard.app import create_app, serve

__all__ = ["create_app", "serve"]
