"""Puts hydralign's ``sweeps/`` folder on Hydra's config search path, so ``+sweeps=<name>`` selects
``sweeps/<name>.yaml``. In a wheel the folder travels inside the package (``hydralign/sweeps``)."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def sweeps_root() -> Path:
    import hydralign

    package = Path(hydralign.__file__).resolve().parent
    return package if (package / "sweeps").is_dir() else package.parent


class HydralignSweepsSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="hydralign-sweeps", path=f"file://{sweeps_root()}")
