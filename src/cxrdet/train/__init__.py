"""The one training loop every model in the project uses (`fit` + `Task`), its checkpoints
with resume, optimizers and schedules, and the fold recipes built on it (classifiers and
detectors). Device, DDP and seeding are cxrdet.runtime's."""
