"""One module per stage of the pipeline: resolve, render, build, smoke, judge, publish."""
