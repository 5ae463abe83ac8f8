"""`python -m yolo_prune` is the same as `yolo-prune`."""
import sys

from yolo_prune.cli import main

sys.exit(main())
