"""The large-learning-rate study (methods spec section 11), an application on the library:

- `metrics`: the §11.2 metric definitions, what each column of the study's tables means;
- `pruning`: global magnitude pruning of backbones and heads and the accuracy-vs-sparsity curve;
- `attribution`: core-feature utilisation from input attributions;
- `pipeline`: the two pipelines, `backbone_study` (11.3 B) and `head_study` (11.3 A);
- `protocol`: the three-arm study of 11.3 as jobs (SLURM array tasks) and a merge;
- `hypotheses`: the claims of 11.1 as tests on a study's runs;
- `tables`: summaries over seeds (std ddof = 1), markdown / CSV through `embedkit.tables`, and
  the panels `embedkit.viz.lr` draws.

Submodules are imported by name (nothing is re-exported here), so importing one piece never
pulls in torch or the cache through another.
"""
