"""Everything on disk: input sources, the run directory and its lock, chunks, caches and tables (`io`), their
schemas, the funnel's stage reports, the run manifest, and the guards (`watchdog`, `failpoints` for crash tests).
Imports the basics only (config, errors): it knows no teacher, grader or stage."""
