"""Policy test suites (`*.test.yaml`): the runner behind `pdp test` and our own tests."""
