"""``python -m nerve`` runs the CLI."""

from nerve.cli import main

raise SystemExit(main())
