"""The names a config key may take where the code, not a config group, decides them (a leaf: the plan checks them
before anything heavy loads; the builders use them)."""

OPTIMIZERS = ("adamw", "adamw_fused", "sgd", "adafactor")  # optimizer.name (hydralign.optim.optimizers)
SCHEDULES = ("constant", "linear", "cosine", "multistep")  # schedule.name (hydralign.optim.schedules)
STRATEGIES = ("auto", "ddp", "fsdp", "deepspeed")  # hardware.strategy
PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true")  # hardware.precision
