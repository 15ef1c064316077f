"""The one training loop every model in the project uses, and its parts: device and
precision, DistributedDataParallel, seeding, checkpoints with resume, optimizers and
schedules, and the classifier recipes built on it."""
