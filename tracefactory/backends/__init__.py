"""Models behind small Protocols (`base`, `scorers`): teachers (in-process vLLM, OpenAI-compatible servers, a fake
for tests), step scorers (Monte-Carlo, the PRM), prompts, identities, a local server; `factory` builds them.
Imports grading, store and the basics; never rewriting, stages or anything above."""
