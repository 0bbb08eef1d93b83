"""Ten fixed, subject-independent, gender-balanced folds.

Every actor lands in exactly one fold. Actors are split by gender and each
gender is dealt round-robin over the folds in ascending id order; the second
gender's deal continues where the first stopped, so fold sizes differ by at most
one actor and each fold's gender counts differ by at most one where the counts
allow. The assignment depends only on the actor ids and genders, so it is the
same on every machine and for every builder config.
"""

from __future__ import annotations

from typing import Mapping

NUM_FOLDS = 10


def assign_folds(genders: Mapping[int, str], num_folds: int = NUM_FOLDS) -> dict[int, int]:
  """Maps actor id -> fold for actors with gender 'male' or 'female'."""
  if len(genders) < num_folds:
    raise ValueError(f"need at least {num_folds} actors for {num_folds} folds, got {len(genders)}")
  bad = {a: g for a, g in genders.items() if g not in ("male", "female")}
  if bad:
    raise ValueError(f"unknown gender for actors {bad}")
  folds: dict[int, int] = {}
  position = 0
  for gender in ("male", "female"):
    for actor in sorted(a for a, g in genders.items() if g == gender):
      folds[actor] = position % num_folds
      position += 1
  return folds


def fold_table(genders: Mapping[int, str], num_folds: int = NUM_FOLDS) -> str:
  """Markdown table of the folds (for the builders' READMEs)."""
  folds = assign_folds(genders, num_folds)
  lines = ["| fold | actors | male | female |", "|---|---|---|---|"]
  for f in range(num_folds):
    actors = sorted(a for a, k in folds.items() if k == f)
    m = sum(genders[a] == "male" for a in actors)
    lines.append(f"| {f} | {', '.join(map(str, actors))} | {m} | {len(actors) - m} |")
  return "\n".join(lines)
