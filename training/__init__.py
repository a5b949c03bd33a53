"""memadapter.training: dataset builders, collator, losses, Trainer subclass, Accelerate entry point.

Filled by the training work (issue 4); importing it today gives an empty namespace, nothing that
pretends to train.
"""
