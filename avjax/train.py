"""Training loop (filled in by the training issue)."""


def train_and_evaluate(config, workdir):
  raise NotImplementedError("training lands with the training issue")
