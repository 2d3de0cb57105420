"""A definition over a SQLite table whose text primary key may hold NULL."""

from backfill import Backfill

codes_by_code = Backfill(
    name="codes_by_code", table="codes", key="code", work="UPDATE codes SET v = 1 WHERE code BETWEEN :first AND :last"
)
