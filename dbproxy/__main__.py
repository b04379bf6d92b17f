"""`python -m dbproxy` is the `dbproxy` command."""

from dbproxy.cli import main

raise SystemExit(main())
