"""The storage contract run for each built-in backend, and the tests of what is particular to each."""
