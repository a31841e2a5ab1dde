"""The static leaderboard: `kdbench site build` renders result records into HTML (docs/architecture.md, Leaderboard).

A pure function from records to files: pandas for the tables, the statistics of
`kdbench.compare` / `kdbench.stats`, jinja2 with autoescape, inline SVG written directly. It never
imports torch; method and task metadata come from `catalog.json` (see `kdbench.site.catalog`).
"""
