"""What a workdir's recorded config commits it to: the protocol fields (every field but
those that only decide how a run executes), their differences from a new config, and
their hash."""

from __future__ import annotations

import hashlib
import json

from avjax import config_lib


# Fields a rerun on an existing workdir may change: they decide how a run executes
# (which test folds, logging, checkpoint cadence, input workers, convolution form,
# where the files are) but not the model, the data or the protocol. Any other
# difference from the recorded config stops the run (`workdir.record_config`).
RUN_ONLY_FIELDS = (
    "folds", "train.log_every_steps", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "input.num_workers", "input.prefetch", "input.eval_batch_size", "input.cache_on_device",
    "train.parallel_folds",
    "model.conv_impl", "model.remat", "eval.figures", "eval.reference_bank", "eval.chunk_size",
    "dataset.data_dir", "dataset.manual_dir", "dataset.build",
)


def _flatten(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(_flatten(value, name + "."))
    else:
      out[name] = list(value) if isinstance(value, tuple) else value
  return out


def protocol_fields(config) -> dict:
  """The complete config, flattened ('model.variant': ...), without RUN_ONLY_FIELDS."""
  flat = _flatten(config_lib.complete(config).to_dict())
  return {k: v for k, v in flat.items() if k not in RUN_ONLY_FIELDS}


def config_diff(recorded, config) -> list[tuple[str, object, object]]:
  """[(field, recorded value, new value)] for the protocol fields that differ."""
  a, b = protocol_fields(recorded), protocol_fields(config)
  missing = object()
  return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)]


def config_hash(config) -> str:
  """16 hex digits of the sha256 of the protocol fields (fold_info.json's `config_hash`)."""
  text = json.dumps(protocol_fields(config), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]
