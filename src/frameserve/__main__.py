"""``python -m frameserve`` runs the command line."""

from frameserve.cli.main import main

raise SystemExit(main())
