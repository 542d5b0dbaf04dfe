"""Looking at features: what they fire on and what they do.

* :mod:`saehooks.analysis.stats` -- the one statistics pass (firing frequency, mean,
  maximum, top activating examples) and the density histogram;
* :mod:`saehooks.analysis.logits` -- a feature's direct effect on the logits;
* :mod:`saehooks.analysis.attribution` -- exact ablation effects on the loss and their
  gradient estimate;
* :mod:`saehooks.analysis.steering` -- steering sweeps;
* :mod:`saehooks.analysis.html` -- a self-contained HTML page per feature.

The public functions are exported by :mod:`saehooks` (``sh.scan_features`` ...). This
file imports none of the modules: :mod:`saehooks.interventions` uses
:mod:`saehooks.analysis.stats` (relative steering measures a maximum there) while
:mod:`~saehooks.analysis.attribution` and :mod:`~saehooks.analysis.steering` use the
interventions, so the package must not pull them all in at once.
"""
