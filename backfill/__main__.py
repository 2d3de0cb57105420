from backfill.cli import entry_point

entry_point()
