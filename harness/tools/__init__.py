"""Tasks that work on stored results: merge, pin, bisect, diff."""
