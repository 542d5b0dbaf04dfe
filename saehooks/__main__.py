"""``python -m saehooks`` (and ``torchrun -m saehooks eval ...``): the command line."""

from saehooks.cli import main

raise SystemExit(main())
