"""The checkpoint manager keeps the latest k plus the best, and reports the best as best."""

import tempfile

import ml_collections
import numpy as np
from absl.testing import absltest

from avjax import train_state


class CheckpointManagerTest(absltest.TestCase):

  def test_best_step_is_the_best_not_the_latest(self):
    config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 2}})
    manager = train_state.checkpoint_manager(tempfile.mkdtemp(), config)
    state = {"w": np.arange(3.0)}
    # Validation accuracy only at some steps (as with eval_every_epochs).
    for step, acc in ((1, 0.5), (2, 0.9), (3, None), (4, 0.7), (5, None), (6, None)):
      metrics = None if acc is None else {"validation_accuracy": acc}
      train_state.save_checkpoint(manager, step, state, {"step": step}, metrics)
    manager.wait_until_finished()
    self.assertEqual(manager.best_step(), 2)
    self.assertEqual(manager.latest_step(), 6)
    self.assertEqual(manager.all_steps(), [2, 5, 6])   # the best plus the latest two
    restored = manager.restore(2)
    self.assertEqual(restored["data"], {"step": 2})


if __name__ == "__main__":
  absltest.main()
