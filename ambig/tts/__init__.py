"""Test-time scaling: spend more inference compute per clip (several trajectories) and combine read-outs."""
