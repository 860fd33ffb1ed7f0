"""Reading what the user wrote: matrix.yaml, its cell selection, its schema and its lock file."""
