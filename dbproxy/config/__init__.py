"""Settings and logging, the bottom layer beside `protocol`.

- `settings`: one pydantic model filled from defaults, a TOML file, the environment and the
  command line.
- `log`: structured logging (`log.event`) and the redaction of secrets before anything is logged
  or shown (`redact_statement`).
- `datadir`: one data directory, one proxy (the `flock` on `DATA_DIR/dbproxy.lock`).

Imports nothing from dbproxy.
"""
