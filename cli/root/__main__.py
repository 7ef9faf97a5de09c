"""`python -m dreamreel` runs the command line."""

from dreamreel.cli.main import main

raise SystemExit(main())
