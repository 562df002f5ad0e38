"""Test doubles: stand-ins for Slurm, backends and clients, used by the tests and benchmarks."""
