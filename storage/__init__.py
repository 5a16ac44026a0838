"""SQLite storage: the database wrapper, migrations and one repository module per table group."""
