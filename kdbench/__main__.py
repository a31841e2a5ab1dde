"""`python -m kdbench ...` (what `torchrun --nproc_per_node N -m kdbench run ...` starts)."""

import sys

from kdbench.cli import main

sys.exit(main())
