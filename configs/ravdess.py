r"""RAVDESS: the paper's gating model by default (Table I's best row, `w8_l1_ov`).

Run (all 10 folds into runs/ravdess/fold_k, then results.md and figures/):
  python -m avjax.main --config=configs/ravdess.py --workdir=runs/ravdess

Tokens, comma-separated after a colon (`--config=configs/ravdess.py:audio_lstm,w4_l1_ov`):
  windowing   w8_l1_ov (default), w2_l1_ov, w2_l2_ov, w4_l1_ov, w6_l1_ov, w2_l1_no,
              w4_l1_no (Table I's rows, 0.5 s hop), each with a `_fit` twin (windows
              spread over the clip); w1_l1_no_fit is the `global` variant's window.
  model       gating (default, the paper's method), lstm (A-LSTM + V-LSTM, no MSE),
              global (AV-Global: one centred 1 s window, no LSTM), audio_lstm,
              audio_global, video_lstm, video_global (Table II's single-modality rows;
              the audio ones read the `audio_<windowing>` records of the audio archive).
  recipe      warmup_semihard (default; not the paper's: batch-all warm-up over half of
              training, semi-hard MWTSM, centred audio head, AdamW), paper_literal (the
              paper's recipe read literally), semihard, centered_semihard (steps between
              the two).
  no_mwtsm    the miner may reuse earlier windows' triplets; the paper's batch-hard
              ablation is `paper_literal,no_mwtsm`.
  runlocal    a 5-step smoke run on fold 0.
Any field can be overridden: --config.train.num_epochs=50, --config.model.trunk=frozen.

Measured on the 1440 speech WAVs of the audio archive, 10 folds x 100 epochs, default
recipe, last checkpoint, last gate, on a 2-core Intel Xeon CPU (2026-12-05; README):
  :audio_lstm --config.model.trunk=frozen     A-LSTM 45.0 +- 9.0 % (paper 40.1), 749 s
  :audio_global --config.model.trunk=frozen   AO-Global 39.7 +- 7.2 % (paper 50.1), 98 s
The paper's end-to-end fine-tuning (the default trunk) and every video row: not run yet.
"""

from avjax import config_lib


def get_config(arg=None):
  config = config_lib.get_base_config()
  config_lib.set_dataset(config, "ravdess")
  return config_lib.apply_args(config, arg)
