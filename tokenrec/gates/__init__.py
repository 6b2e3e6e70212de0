"""Data gates: Great Expectations suites and the errors they raise."""
