"""One module per stage, each with one public verb: pure functions over polars frames (load, rewrite, dedup,
decontaminate, rollout, grade, step_score, select, difficulty, curriculum); `pipeline` runs them.
Imports rewriting, backends, grading, store and the basics; never the pipeline, flows, publish or training."""
