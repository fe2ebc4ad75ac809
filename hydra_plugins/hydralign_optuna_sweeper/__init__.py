"""hydralign's Optuna sweeper for Hydra (``hydra/sweeper=optuna``), on current Optuna (4.x, 5.x)."""
