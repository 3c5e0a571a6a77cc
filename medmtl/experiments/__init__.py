"""Experiments: many runs at once, on top of the training engine -- `compare` (a grid of methods
x seeds, sharded across machines), `tune` (an Optuna search per method, shareable through a
database), `drift` (a resumed folder whose settings changed) and `retime` (every model's
latency measured again, together). The report reads what these leave in the run folders."""
