"""Monitoring during training: the `TraitWatchCallback`, and LoRA/full SFT with it attached.

The callback measures drift in-process on the live model (METHOD.md 3 [improve]), logs it through
`Trainer.log`, stores it in the run store and acts on a monitor's alarm; `run_sft` is the
`traitwatch train` command's library entry point.
"""

from traitwatch.datasets.chat_jsonl import file_sha256, load_chat_jsonl
from traitwatch.drift.anchoring import AnchorError
from traitwatch.monitor.watch import AlarmMonitor
from traitwatch.train.alarm import ALARM_ACTIONS, AlarmAction, DriftAlarmError
from traitwatch.train.callback import TraitWatchCallback, basis_fingerprint
from traitwatch.train.data import ChatDataset, DataStats, PaddingCollator, encode_conversation, tokenize_chats
from traitwatch.train.distributed import gather_projection, lockstep_passes, shard_indices
from traitwatch.train.record import DriftRecord
from traitwatch.train.sft import RUN_MARKER, SFTConfig, SFTResult, TrainConfigError, run_sft
from traitwatch.train.suspects import RowScores, TrainedRows

__all__ = [
    "ALARM_ACTIONS",
    "AlarmAction",
    "AlarmMonitor",
    "AnchorError",
    "ChatDataset",
    "DataStats",
    "DriftAlarmError",
    "DriftRecord",
    "PaddingCollator",
    "RUN_MARKER",
    "RowScores",
    "SFTConfig",
    "SFTResult",
    "TraitWatchCallback",
    "TrainConfigError",
    "TrainedRows",
    "basis_fingerprint",
    "encode_conversation",
    "file_sha256",
    "gather_projection",
    "load_chat_jsonl",
    "lockstep_passes",
    "run_sft",
    "shard_indices",
    "tokenize_chats",
]
