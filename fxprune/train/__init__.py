"""Training: the one training/evaluation loop shared by ``hpo`` and complexity-aware
training, and complexity-aware training itself, one concern per module:

    loop           train_epoch / evaluate / TrainingDiverged (used by hpo and train_prune)
    options        TrainPruneOptions, check_tradeoff
    results        EpochRecord, TrainPruneHistory, TrainPruneResult
    state          PruningState: the running model, its gates and expected cost
                   (fxprune.cost.expected), removals
    gates          where the gates multiply (GateBank, the gated module)
    gate_training  the gates' optimizer, the cost-gradient split, BN recalibration
    trainer        train_prune (the method's design notes are its docstring)

Modules are imported on use, so ``fxprune.train.loop`` stays light for ``hpo``.
"""
