r"""RAVDESS, the paper's gating model (Table I best row: 8 windows of 1 s, 0.5 s overlap).

Run:
  python -m avjax.main --config=configs/ravdess.py --workdir=runs/ravdess
Variants (comma-separated after a colon):
  --config=configs/ravdess.py:w4_l1_ov            # another row of Table I
  --config=configs/ravdess.py:lstm                # A-LSTM + V-LSTM (Table II)
  --config=configs/ravdess.py:global              # AV-Global (one window at the middle)
  --config=configs/ravdess.py:audio_lstm          # A-LSTM alone (also audio_global, video_lstm, video_global)
  --config=configs/ravdess.py:no_mwtsm            # batch-hard mining instead of MWTSM
  --config=configs/ravdess.py:runlocal            # a 5-step smoke run
Fields can be overridden too: --config.train.num_epochs=50.
"""

from avjax import config_lib


def get_config(arg=None):
  config = config_lib.get_base_config()
  config_lib.set_dataset(config, "ravdess")
  return config_lib.apply_args(config, arg)
