"""What a completed config implies about a run, resolved in one place.

A config holds what the user chose. A few facts follow from several of its fields
together, and most of the pipeline needs them: the TFDS builder config to read (the
windowing, `audio_`-prefixed for audio-only records), the windows, the encoders the
model has and where each one's trained part starts (raw media, a cached layer or the
pooled features), whether the fixed parts are cached, the gate modalities that are
scored, the batch and the batch-all warm-up in epochs.

`of(config)` resolves them into a frozen `RunSpec`: the data layer, the feature store,
the training loop and the evaluation ask it rather than re-deriving a fact from the
fields (tests/test_imports.py checks that the resolvers it calls are called nowhere
else, but by the model on its own `model` block). It is keyed on the fields it reads, so asking
again costs a dictionary lookup, and a config changed in one of them gets its own
spec. `train.train_and_evaluate` prints it once at the start of a job (`describe`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from typing import Mapping

from avjax import choices
from avjax import trunks
from avjax.data import registry
from avjax.data import windows

# The config fields a RunSpec is resolved from, in the order `_resolve` takes them.
FIELDS = ("dataset.name", "dataset.config", "dataset.records", "model.modalities",
          "model.trunk", "loss.batch_all_fraction", "train.num_epochs",
          "input.clips_per_class", "dataset.class_names")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """The derived facts of one config (`of`); read-only."""
  dataset: str                      # config.dataset.name
  builder_config: str               # the TFDS builder config read, e.g. 'audio_w1_l3_no_fit'
  audio_records: bool               # whether that is an audio-only (`audio_`) config
  window: windows.WindowSpec        # the windows of config.dataset.config
  branches: tuple[str, ...]         # the encoders: ('audio',), ('video',) or both
  gate_modalities: tuple[str, ...]  # the embeddings scored: AO, VO, AV
  # {encoder: its trained part's input}: None (raw media, 'finetune'), 'pooled'
  # ('frozen') or the layer a 'finetune_from:' trunk is cut at.
  trunk_inputs: Mapping[str, str | None]
  cached: bool                      # the encoders' fixed layers are cached (not 'finetune')
  batch_size: int                   # clips_per_class x the number of classes
  warmup_epochs: int                # epochs of batch-all mining before MWTSM's negatives

  @property
  def cuts(self) -> dict[str, str]:
    """{encoder: cached endpoint} for the encoders whose lower layers are cached."""
    return {m: c for m, c in self.trunk_inputs.items() if c is not None}

  def describe(self) -> str:
    """One line for the log: what the run reads and where the encoders start."""
    def start(cut):
      if cut is None:
        return "trained end to end from the media"
      if cut == trunks.POOLED:
        return "frozen (pooled features cached)"
      return f"trained above {cut} (cached)"
    starts = "; ".join(f"{m} encoder {start(c)}" for m, c in self.trunk_inputs.items())
    return (f"{self.dataset}/{self.builder_config}: {self.window.num_windows} window(s) of "
            f"{self.window.length:g} s; {starts}; scored {'/'.join(self.gate_modalities)}; "
            f"batch {self.batch_size}; batch-all warm-up {self.warmup_epochs} epoch(s)")


def warmup_epochs(batch_all_fraction: float, num_epochs: int) -> int:
  """`loss.batch_all_fraction` x `train.num_epochs`, rounded down (a 1-epoch `runlocal`
  run has no warm-up)."""
  return int(float(batch_all_fraction) * int(num_epochs) + 1e-9)


def _field(config, path: str):
  group, name = path.split(".")
  value = config[group][name]
  return tuple(value) if isinstance(value, (list, tuple)) else value


def of(config) -> RunSpec:
  """The RunSpec of `config` (a completed config, or any with the `FIELDS`). Raises
  ValueError naming the field for a trunk the model cannot have."""
  return _resolve(*(_field(config, f) for f in FIELDS))


@functools.lru_cache(maxsize=64)
def _resolve(dataset, windowing, records, modalities, trunk, batch_all_fraction, num_epochs,
             clips_per_class, class_names) -> RunSpec:
  audio = registry.reads_audio_records(dataset, records, modalities)
  model = types.SimpleNamespace(trunk=trunk, modalities=modalities)
  return RunSpec(
      dataset=dataset,
      builder_config=(registry.AUDIO_CONFIG_PREFIX if audio else "") + windowing,
      audio_records=audio,
      window=windows.parse_name(windowing),
      branches=choices.BRANCHES[modalities],
      gate_modalities=choices.GATE_MODALITIES[modalities],
      trunk_inputs=types.MappingProxyType(trunks.trunk_inputs(model)),
      cached=str(trunk) != "finetune",
      batch_size=int(clips_per_class) * len(class_names),
      warmup_epochs=warmup_epochs(batch_all_fraction, num_epochs))
