"""The campaign journal (SQLite): what was sent, so a run can resume without sending twice.

The only package that touches sqlite3. `schema` holds the tables and the connection settings,
`store` the run-time writer (group commits from a thread), `queries` the reads behind `report`.
"""
