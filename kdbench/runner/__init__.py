"""The runner: card and names → run spec → training → evaluation → record; sweeps, executors,
DDP, teacher and output caches (docs/architecture.md, Runner). Importing this package loads nothing."""
