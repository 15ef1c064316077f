"""Where a process computes, shared by training and inference: device and precision,
the torchrun process group, seeding and determinism, and batched prediction sharded over
DDP ranks. Nothing here knows about a model family or a training recipe."""
