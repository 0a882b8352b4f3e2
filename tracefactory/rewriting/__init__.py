"""More problems from each one: symbolic perturbation with re-derived golds (`perturb`), teacher paraphrases kept
only when every number survives (`paraphrase`), and the text normalisation dedup and decontamination share.
Imports backends (the teacher that paraphrases), grading, store and the basics; never stages or anything above."""
