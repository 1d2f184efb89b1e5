"""Training: pretraining loop, optimizers, schedule, loader, checkpoints, scale-out.

Entry point: `dsv4.train.pretrain.pretrain(TrainConfig(...))`.
"""
