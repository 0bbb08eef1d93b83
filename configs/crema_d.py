r"""CREMA-D (audio-visual), the paper's gating model (Table I best row: 6 windows of 1 s, 0.5 s overlap).

Run:
  python -m avjax.main --config=configs/crema_d.py --workdir=runs/crema_d
Variants as in configs/ravdess.py, e.g. --config=configs/crema_d.py:w4_l1_ov or :global.
"""

from avjax import config_lib


def get_config(arg=None):
  config = config_lib.get_base_config()
  config_lib.set_dataset(config, "crema_d_av")
  return config_lib.apply_args(config, arg)
