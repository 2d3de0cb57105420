from backfill.cli import run

run()
