"""Plain data and pure helpers: imports nothing else of harness, and no Docker."""
