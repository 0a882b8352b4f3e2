"""Model training: NOT part of a production run. The embedded teachers (`teacher`), their synthetic problems
(`synth`), the process reward model (`prm`, `tracefactory train-prm`) and the student bench (`student`).
May import anything below the flows; only the CLI imports it (a test keeps pipeline, stages and flows from it)."""
