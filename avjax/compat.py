"""What files written by avjax 0.1.0 lack, and what the run that wrote them did: one table.

Each row of `FORMER` is a fact that a later build began to record, or whose default
changed, with the value the 0.1.0 run had, the config field that holds it and the
fold_info.json key that reports it. Two readers use the table:

- `config_lib.complete(recorded=True)`: a config.json without `avjax_version` (0.1.0 did
  not write it) that lacks a field gets the row's value, not today's default
  (`RECORDED_BEFORE`), so that its workdir resumes as it was trained;
- `results.load_fold` and the results document: a fold_info.json that lacks a key is
  read with the row's value (`FOLD_INFO_BEFORE`; None: the run did not record it).

tests/test_results.py checks that the two columns agree: a 0.1.0 config completed here
writes, through `evaluate.recipe_info`, the fold_info.json values that an old
fold_info.json is read with.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_SAME = object()


@dataclasses.dataclass(frozen=True)
class Former:
  value: Any                   # what the 0.1.0 run did, as its config field's value
  field: str | None = None     # "group.name" of the config field, if configs hold it
  info_key: str | None = None  # the fold_info.json key, if fold_info.json reports it
  info_value: Any = _SAME      # the fold_info.json value, where it is not `value`

  @property
  def info(self) -> Any:
    return self.value if self.info_value is _SAME else self.info_value


FORMER = (
    Former("hardest", "loss.negatives", "negatives"),
    Former(False, "model.center_audio_head", "center_audio_head"),
    Former(False, "model.center_video_head", "center_video_head"),
    Former("squared", "loss.distance", "distance"),
    # No warm-up: a fraction of 0 in the config, 0 epochs in fold_info.json.
    Former(0.0, "loss.batch_all_fraction", "batch_all_epochs", info_value=0),
    # Configs always held these; fold_info.json began to report them later.
    Former(1.0, None, "margin"),
    Former(None, None, "mse_weight"),       # not recorded
    Former("adam", None, "optimizer"),
    Former(None, None, "learning_rate"),    # not recorded
    Former(None, None, "weight_decay"),     # not recorded
    # fold_info.json does not fill these in: a results table does not need them.
    Former(False, "loss.mask_padded_windows"),
    Former("finetune", "model.trunk"),
    Former(0, "input.cached_views"),
    Former(False, "input.speaker_centering", "speaker_centering"),
    Former(False, "input.speaker_scaling", "speaker_scaling"),
    Former("conv7", "model.audio_head_layer", "audio_head_layer"),
    Former("mean", "model.audio_head_stats", "audio_head_stats"),
    Former(1.0, "optim.trunk_lr_scale"),
)

# {(group, field): value} for config.json.
RECORDED_BEFORE = {tuple(r.field.split(".")): r.value for r in FORMER if r.field}
# {key: value} for fold_info.json.
FOLD_INFO_BEFORE = {r.info_key: r.info for r in FORMER if r.info_key}
