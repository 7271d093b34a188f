"""build: a variant from its flags and tiles: device, compile options, the compiled kernel, SASS, the compile sweep."""
