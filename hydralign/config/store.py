"""Hydra's ConfigStore: the schema as ``config_schema`` (the first default of ``conf/config.yaml``) and each method's
schema as ``method/<name>_schema`` (the first default of ``conf/method/<name>.yaml``)."""

from __future__ import annotations

from typing import Any

from hydralign.config.schema import Config
from hydralign.methods.specs import METHODS


def register() -> None:
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for name, spec in METHODS.items():  # conf/method/<name>.yaml starts from <name>_schema
        store.store(group="method", name=f"{name}_schema", node=spec.schema)
    _rename_slurm_launcher(store)


def _rename_slurm_launcher(store: Any) -> None:
    """hydra-submitit-launcher's SLURM config (ConfigStore ``hydra/launcher/submitit_slurm``) moves to
    ``submitit_slurm_base``, which ``conf/hydra/launcher/submitit_slurm.yaml`` extends with the hardware preset's
    resources. conf/ comes first on Hydra's search path, so ``hydra/launcher=submitit_slurm`` picks that file;
    were the plugin's node left under the same name, Hydra would also merge it into the file as a schema
    ("automatic schema matching", deprecated since Hydra 1.1, with a warning on every run)."""
    from hydra.core.plugins import Plugins

    Plugins.instance()  # imports every plugin once (it re-runs their modules): the plugin's node is stored now
    launchers = store.repo.get("hydra", {}).get("launcher", {})
    node = launchers.pop("submitit_slurm.yaml", None)
    if node is not None:
        node.name = "submitit_slurm_base.yaml"
        launchers[node.name] = node
