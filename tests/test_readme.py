"""The README's two set-up commands are the ones CI and users run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands():
  return re.findall(r"```bash\n(python3 -m venv[^\n]*)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
  commands = _commands()
  assert len(commands) == 2
  demo, tests = commands
  assert demo.endswith("wonderland demo --out demo_out") and "pytest" in tests
  assert tests.index("pip install torch==2.13.0") < tests.index("pip install -c constraints.txt -e '.[test]'")
  ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
  assert tests in ci_lines, ".ci/run must run the README's test command verbatim"
