"""Reading and judging what a teacher wrote: the think block (`think`), final-answer extraction (`answers`),
steps (`steps`), equivalence with the gold (`verify`, Math-Verify) in a pool of processes with hard timeouts (`pool`).
Imports `store` and the basics only (config, errors); never backends, stages or anything above."""
