"""TensorBoard: event files written with the tensorboard package's own protos and record writer.

No TensorFlow and no torch.utils.tensorboard (1.9 s to import): events are written synchronously
to one file per process and log directory, flushed after each write batch. A KD experiment is
one log directory with a step per epoch; a resumed one appends a new file to the same directory
that starts with a SessionLog START at the first step it writes, so TensorBoard drops whatever
an earlier process wrote from that step on (no duplicate steps). A sweep run is one directory
with its config as HParams and its final metrics as scalars at step 0.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.summary.writer.record_writer import RecordWriter


class EventFile:
    """A new tfevents file in `logdir`, appended to synchronously."""

    def __init__(self, logdir: str | Path) -> None:
        path = Path(logdir)
        path.mkdir(parents=True, exist_ok=True)
        # microseconds first: files sort in the order they were written (TensorBoard reads
        # a directory's files in name order)
        name = f"events.out.tfevents.{time.time_ns() // 1000}.{socket.gethostname()}.{os.getpid()}"
        self.path = path / name
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._writer = RecordWriter(self._file)
        self.write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, event: event_pb2.Event) -> None:
        """Append one event (not yet flushed)."""
        self._writer.write(event.SerializeToString())

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """One event holding every scalar of a step."""
        summary = summary_pb2.Summary(
            value=[
                summary_pb2.Summary.Value(tag=k, simple_value=float(v)) for k, v in values.items()
            ]
        )
        self.write(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def session_start(self, step: int) -> None:
        """A restart marker: TensorBoard discards earlier events at steps >= `step`."""
        log = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
        self.write(event_pb2.Event(wall_time=time.time(), step=step, session_log=log))

    def hparams(self, params: Mapping[str, str], group: str) -> None:
        """The run's parameters for TensorBoard's HParams dashboard (a session-start record)."""
        info = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
        for k, v in params.items():
            info.hparams[k].string_value = v
        self._plugin(
            metadata.SESSION_START_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(
                session_start_info=info, version=metadata.PLUGIN_DATA_VERSION
            ),
        )

    def session_end(self, ok: bool = True) -> None:
        """The HParams session's end (success or failure)."""
        status = api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE
        info = plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time())
        self._plugin(
            metadata.SESSION_END_INFO_TAG,
            plugin_data_pb2.HParamsPluginData(
                session_end_info=info, version=metadata.PLUGIN_DATA_VERSION
            ),
        )

    def _plugin(self, tag: str, data: Any) -> None:
        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(
                plugin_name=metadata.PLUGIN_NAME, content=data.SerializeToString()
            )
        )
        value = summary_pb2.Summary.Value(tag=tag, metadata=meta)
        value.tensor.dtype = 1  # DT_FLOAT, an empty tensor: the content is in the metadata
        summary = summary_pb2.Summary(value=[value])
        self.write(event_pb2.Event(wall_time=time.time(), summary=summary))

    def flush(self) -> None:
        """Push what was written to the file system."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the file."""
        self._writer.close()


class TBExperiment:
    """One KD experiment: `<root>/<name>/`, scalars per epoch (step = epoch)."""

    def __init__(self, logdir: str | Path, last_step: int, params: Mapping[str, str], group: str):
        self.file = EventFile(logdir)
        if last_step > 0:  # a resumed experiment: discard anything written past what we know
            self.file.session_start(last_step + 1)
        else:
            self.file.hparams(params, group)
        self.file.flush()

    def log(self, step: int, values: Mapping[str, float]) -> None:
        """The scalars of one epoch."""
        self.file.scalars(step, values)
        self.file.flush()

    def close(self, ok: bool) -> None:
        """End the session (HParams status) and close the file."""
        self.file.session_end(ok)
        self.file.close()


class TBRuns:
    """Sweep runs: `<root>/<group>/<run name>/` each with HParams and final scalars."""

    def __init__(self, root: str | Path, group: str) -> None:
        self.root = Path(root) / _safe(group)
        self.group = group

    def log_runs(self, runs: list[tuple[str, dict[str, str], dict[str, float]]]) -> None:
        """Write (name, params, metrics) of many runs, one small file each."""
        for name, params, metrics in runs:
            f = EventFile(self.root / _safe(name))
            f.hparams(params, self.group)
            f.scalars(0, metrics)
            f.session_end(True)
            f.close()

    def close(self) -> None:
        """Nothing held open between batches."""


def _safe(name: str) -> str:
    """A file-system-safe directory name."""
    keep = "".join(c if c.isalnum() or c in "-_.=+," else "_" for c in name.strip())
    return keep.strip(".") or "run"
