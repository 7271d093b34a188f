"""track: across commits: history, compare, the regression gate, git bisect."""
