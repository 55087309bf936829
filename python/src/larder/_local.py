"""Local mode: a feature repo driven through the ``larder`` command-line binary."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import pyarrow.parquet as pq

from ._convert import TableLike, entities_to_columns, to_arrow_table
from ._errors import InvalidArgument, LarderError
from ._response import OnlineResponse, TrainingSet

__all__ = ["FeatureStore", "find_binary"]

PathLike = Union[str, "os.PathLike[str]"]


def find_binary(binary: Optional[PathLike] = None) -> str:
    """The ``larder`` binary to run: ``binary`` if given, else ``$LARDER_BIN``, else
    ``larder`` on ``PATH``. Raises :class:`LarderError` when none is found (no other
    place is searched)."""
    if binary is not None:
        candidate = str(binary)
        source = "the binary argument"
    elif os.environ.get("LARDER_BIN"):
        candidate = os.environ["LARDER_BIN"]
        source = "LARDER_BIN"
    else:
        found = shutil.which("larder")
        if found is None:
            raise LarderError(
                "cannot find the larder binary: pass FeatureStore(binary=...), set LARDER_BIN, "
                "or put larder on PATH (cargo install --locked --path crates/larder-cli)"
            )
        return found
    path = Path(candidate)
    if not (path.is_file() and os.access(path, os.X_OK)):
        resolved = shutil.which(candidate)
        if resolved is None:
            raise LarderError(f"the larder binary from {source} ({candidate}) is not an executable file")
        return resolved
    return str(path)


def _time_arg(value: Any) -> str:
    """A CLI time argument: strings as given, dates and datetimes as ISO 8601 / RFC 3339."""
    if isinstance(value, str):
        return value
    isoformat = getattr(value, "isoformat", None)
    if isoformat is None:
        raise InvalidArgument(f"a time must be a string, date or datetime; got {value!r}")
    text: str = isoformat()
    if getattr(value, "tzinfo", "absent") is None:  # a naive datetime: UTC
        text += "Z"
    return text


class FeatureStore:
    """A feature repo on this machine, driven by running the ``larder`` binary.

    Every method runs one ``larder`` command (``apply``, ``materialize``, ``training-set``,
    ``get``) against ``repo_path`` and raises :class:`LarderError` with the command's stderr
    when it exits non-zero.

    Args:
        repo_path: The folder holding ``larder.yaml``.
        binary: The ``larder`` binary; default ``$LARDER_BIN``, then ``larder`` on ``PATH``.
    """

    def __init__(self, repo_path: PathLike = ".", binary: Optional[PathLike] = None) -> None:
        self.repo_path: Path = Path(repo_path).resolve()
        """The feature repo."""
        self.binary: str = find_binary(binary)
        """The ``larder`` binary that runs."""

    def _run(self, *args: str) -> str:
        command = [self.binary, "--repo", str(self.repo_path), *args]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            stderr = completed.stderr.strip() or completed.stdout.strip()
            raise LarderError(
                f"`larder {' '.join(args)}` failed (exit {completed.returncode}): {stderr}"
            )
        return completed.stdout

    def apply(self, dry_run: bool = False) -> str:
        """Validates the repo and records it in the registry (``larder apply``); returns the
        printed plan. ``dry_run`` prints the plan only."""
        return self._run("apply", *(["--dry-run"] if dry_run else []))

    def materialize(
        self,
        views: Optional[Sequence[str]] = None,
        start: Any = None,
        end: Any = None,
        full_refresh: bool = False,
    ) -> str:
        """Runs the batch lane (``larder materialize``); returns its report.

        Args:
            views: Only these feature views (default: every batch view).
            start: Only source rows at or after this time (str, date or datetime).
            end: Only source rows before this time.
            full_refresh: Ignore change detection and rewrite every row online.
        """
        args = ["materialize"]
        if views:
            args += ["--views", ",".join(views)]
        if start is not None:
            args += ["--start", _time_arg(start)]
        if end is not None:
            args += ["--end", _time_arg(end)]
        if full_refresh:
            args.append("--full-refresh")
        return self._run(*args)

    def get_historical_features(
        self,
        entity_df: TableLike,
        features: Optional[Sequence[str]] = None,
        *,
        feature_service: Optional[str] = None,
        entity_timestamp_column: str = "event_timestamp",
        full_feature_names: bool = False,
    ) -> TrainingSet:
        """Builds a point-in-time correct training set with ``larder training-set`` (the
        entity table goes through a temporary Parquet file); same arguments and result as
        :meth:`larder.Client.get_historical_features`."""
        if (features is None) == (feature_service is None):
            raise InvalidArgument("give either features=[...] or feature_service=..., not both")
        table = to_arrow_table(entity_df, "entity table")
        with tempfile.TemporaryDirectory(prefix="larder-") as folder:
            entities = Path(folder) / "entities.parquet"
            output = Path(folder) / "training.parquet"
            pq.write_table(table, entities)
            args = [
                "training-set",
                "--entities",
                str(entities),
                "--timestamp-column",
                entity_timestamp_column,
                "--output",
                str(output),
            ]
            if feature_service is not None:
                args += ["--feature-service", feature_service]
            else:
                args += ["--features", ",".join(features or [])]
            if full_feature_names:
                args.append("--full-feature-names")
            self._run(*args)
            result = pq.read_table(output)
        return TrainingSet(result.replace_schema_metadata(None))

    def get_online_features(
        self,
        features: Optional[Sequence[str]] = None,
        entities: Optional[TableLike] = None,
        *,
        feature_service: Optional[str] = None,
    ) -> OnlineResponse:
        """Reads online features with ``larder get --json`` (the embedded store directly, or
        the running server that holds it). Values are typed by inference from JSON; for exact
        Arrow types, and for anything beyond a few lookups, use :class:`larder.Client`."""
        if (features is None) == (feature_service is None):
            raise InvalidArgument("give either features=[...] or feature_service=..., not both")
        if entities is None:
            raise InvalidArgument("entities are required, e.g. {'user_id': [1, 2]}")
        columns = entities_to_columns(entities)
        args: List[str] = ["get", "--json"]
        for name, values in columns.items():
            args += ["--entity", f"{name}=" + ",".join(str(v) for v in values)]
        if feature_service is not None:
            args += ["--feature-service", feature_service]
        else:
            args += ["--features", ",".join(features or [])]
        body = json.loads(self._run(*args))
        return OnlineResponse.from_json(body, len(columns))

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.repo_path)!r}, binary={self.binary!r})"
