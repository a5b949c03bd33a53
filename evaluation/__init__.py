"""Outside benchmarks for memadapter (``memadapter eval``): RULER, its lifecycle variants and
BABILong-style tasks regenerated offline, scored side by side for several memory methods on one
frozen backbone. Installed as ``memadapter.evaluation``; the core ``memadapter`` never imports it."""
