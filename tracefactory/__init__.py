"""tracefactory: a reasoning-trace data factory.

The library is pure (no Prefect, no GPU needed to import it); `flows/` wires it into Prefect. Imports go one way,
top to bottom (tests/unit/test_import.py keeps it so):

  cli                         the `tracefactory` command
  training/                   embedded teachers, PRM trainer, student bench: outside a production run
  flows/ (beside the package) Prefect flows and tasks
  publish/                    query, export, release + card
  distributed, pipeline       Ray executor; the stage runner (caches, chunks, resume)
  stages/                     one verb per stage
  rewriting/                  perturbation, paraphrase, text normalisation
  backends/                   teachers, step scorers, PRM, prompts, identities
  grading/                    think blocks, answer extraction, steps, Math-Verify in a pool
  store/                      sources, run directory, schemas, reports, manifest, guards
  config, errors, console, redact   the shared basics
"""

__version__ = "0.1.0"
