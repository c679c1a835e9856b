"""Training: the one training/evaluation loop (``loop``) shared by ``hpo`` and
``train_prune``, and complexity-aware training split into its parts."""
