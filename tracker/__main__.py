"""`python -m tracker`: same as the `tracker` console script."""

from tracker.cli import main

raise SystemExit(main())
