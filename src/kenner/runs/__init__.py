"""The run driver and everything that uses finished runs: train, compare, sweep, evaluate, predict, search."""
