"""The GPU suite's cases as data (the kernel issue's shape list)."""

from harness.check.shapes import Shape

# (label, shape, causal)
SHAPES = [
    ("mission", Shape(1, 8, 512, 512, 64), False),
    ("short", Shape(1, 8, 256, 256, 64), False),
    ("long", Shape(1, 8, 1024, 1024, 64), False),
    ("odd100", Shape(1, 2, 100, 100, 64), False),
    ("d128_1000", Shape(2, 4, 1000, 1000, 128), False),
    ("sq128_sk640", Shape(1, 2, 128, 640, 64), False),
    ("causal", Shape(1, 8, 512, 512, 64), True),
]
INPUTS = ["randn", "large"]
