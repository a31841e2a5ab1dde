"""Typed protocol cards: sections, per-task card types and the parser that validates them."""
