"""What leaves a finished run: `query` (DuckDB over its tables), `export` (messages / ShareGPT files), `release`
(a Hugging Face dataset release: folder, hashes, upload) with its `card` (dataset card, plots).
Reads runs through `store`; may import grading, rewriting and below, never the pipeline, flows or training."""
