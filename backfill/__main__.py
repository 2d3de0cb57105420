from backfill.cli import main

main(prog_name="backfill")
