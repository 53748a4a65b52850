"""``ember bench``: throughput and latency against the device's measured ceilings (issue #3).

Files by role: cli (flags), run (the order of a run), ceilings (copy and matmul rates),
roofline (bytes and FLOPs per step), ember_runner / hf_runner (timed generation), profiling,
environment (what it ran on), report (table, JSON, Markdown) and plot (PNG).
"""
