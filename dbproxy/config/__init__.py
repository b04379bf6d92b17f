"""Settings and logging, the bottom layer beside `protocol`.

- `settings`: one pydantic model filled from defaults, a TOML file, the environment and the
  command line.
- `log`: structured logging (`log.event`) and the redaction of secrets before anything is logged.

Imports nothing from dbproxy.
"""
