"""The project's own docs: no citation of files users do not have."""

import pathlib

from absl.testing import absltest

REPO = pathlib.Path(__file__).resolve().parents[1]


class DocsTest(absltest.TestCase):

  def test_design_decisions_are_in_the_project(self):
    # The design notes users need live in docs/design.md; nothing points outside the
    # repository (../shared is not shipped).
    self.assertTrue((REPO / "docs" / "design.md").is_file())
    self.assertIn("docs/design.md", (REPO / "README.md").read_text())
    offenders = []
    for path in sorted(REPO.rglob("*")):
      if (path.suffix not in (".py", ".md") or ".venv" in path.parts or "runs" in path.parts
          or path.name == "test_docs.py"):
        continue
      text = path.read_text(errors="replace")
      if "DESIGN.md" in text or "../shared/DESIGN" in text:
        offenders.append(str(path.relative_to(REPO)))
    self.assertEqual(offenders, [])


if __name__ == "__main__":
  absltest.main()
