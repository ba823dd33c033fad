"""Tests of the tools: the grid and its options, the data, the report and the regression gate."""
