"""Post-training methods: one LightningModule base, one small subclass per method, listed once in
``hydralign.methods.specs.METHODS``."""
