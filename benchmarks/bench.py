"""`python benchmarks/bench.py [--json] [--quick] ...`: the same as `dreamreel bench` (see dreamreel.pipeline.bench)."""
import sys

from dreamreel.pipeline.bench import main

if __name__ == "__main__":
    sys.exit(main())
