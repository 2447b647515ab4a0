"""What a run writes to its run directory: checkpoints (:mod:`~distdqn.io.checkpoint`),
metrics (:mod:`~distdqn.io.metrics`) and plots (:mod:`~distdqn.io.plot`)."""
