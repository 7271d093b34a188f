"""FlashCore harness: references, metrics, compilation, the GPU path, records."""
