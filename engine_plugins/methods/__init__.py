"""Methods: a model, its loss and its sampler for one role each."""
