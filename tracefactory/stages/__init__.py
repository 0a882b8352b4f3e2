"""One module per stage, each with one public verb: pure functions over polars frames."""
