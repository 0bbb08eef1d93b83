r"""CREMA-D (audio-visual): the paper's gating model by default (Table I's best row, `w6_l1_ov`).

Run (all 10 folds into runs/crema_d/fold_k, then results.md and figures/):
  python -m avjax.main --config=configs/crema_d.py --workdir=runs/crema_d

Tokens, comma-separated after a colon, as in configs/ravdess.py:
  windowing   w6_l1_ov (default), w2_l1_ov, w4_l1_ov (Table I's rows), each with a
              `_fit` twin. The `global` variants take one window: w1_l3_no_fit
              (default, the middle 3 s), w1_l1_no_fit, w1_l2_no_fit, w1_l4_no_fit,
              w1_l1_no_apex, w1_l3_no_apex (the loudest 1 or 3 s). CREMA-D's clips
              are short (1.7 to 3.4 s, 2.5 s on average, in ten we measured), so the
              default 3 s window mostly holds the whole clip, its end zero-padded; the
              3 s were chosen on RAVDESS, whose clips last about 3 to 5 s.
  model       gating (default), lstm, global, audio_lstm, audio_global, video_lstm,
              video_global.
  recipe      warmup_semihard (default; not the paper's), paper_literal (the paper's
              recipe read literally), semihard, centered_semihard.
  no_mwtsm, runlocal.
  cpu         the recipe for a 2-core CPU (frozen trunks, SoundNet's head on conv4's
              mean and std, features normalised per speaker: NOT the paper's protocol;
              described in configs/ravdess.py). The audio rows:
                --config=configs/crema_d.py:audio_global,cpu
                --config=configs/crema_d.py:audio_lstm,cpu
Any field can be overridden: --config.train.num_epochs=50.

Nothing has been run on CREMA-D yet.
"""

from avjax import config_lib
from avjax import config_tokens


def get_config(arg=None):
  config = config_lib.get_base_config()
  config_tokens.set_dataset(config, "crema_d_av")
  return config_tokens.apply_args(config, arg)
