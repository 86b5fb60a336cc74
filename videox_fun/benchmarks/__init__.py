"""Side-by-side benchmarks (``videox-fun bench ...``): speed, memory and quality, JSON out.

Each run compares against a reference in the same process with the same weights and inputs
(diffusers' implementation, the uncached or full-precision run), and records the machine.
"""
