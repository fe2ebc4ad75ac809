"""Post-training methods. Each is found by its file names: ``specs/<name>.py`` (its config and spec: flags the rest of
hydralign reads, found by listing ``specs/``), ``<name>.py`` (its LightningModule on the shared ``base``), its loss in
``hydralign/losses/<name>.py`` and ``conf/method/<name>.yaml``."""
